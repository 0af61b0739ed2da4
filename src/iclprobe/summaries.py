"""Small summary tables for the report: one row per (model, task), the numbers a reader wants first.

Each function takes a combined table of one stage and returns a Polars frame
with readable column names; `write_html_table` writes it as a standalone HTML
page that Snakemake's report shows beside the figures.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import polars as pl

from iclprobe.io import atomic_output
from iclprobe.patching_windows import leading_runs

LN2 = math.log(2)


def surprisal_summary(
    surprisal: pl.DataFrame, examples: tuple[int, ...] = (1, 5, 10)
) -> pl.DataFrame:
    """Mean surprisal at a few examples and at the last, the information to learn the task,
    P(A) at the last example, and the comparison with the uniform code and the control."""
    per_pair = surprisal.group_by("model", "task", "example").agg(
        pl.col("surprisal_nats").mean().alias("nats"),
        pl.col("cumulative_bits").mean().alias("cumulative_bits"),
        pl.col("p_correct").mean().alias("p_correct"),
        pl.col("uniform_cumulative_bits").first(),
        pl.col("control_cumulative_bits_mean").first(),
        pl.len().alias("replicates"),
    )
    last = per_pair.group_by("model", "task").agg(pl.col("example").max().alias("last"))
    per_pair = per_pair.join(last, on=["model", "task"])
    at = [
        per_pair.filter(pl.col("example") == e).select(
            "model", "task", pl.col("nats").alias(f"nats at {e}")
        )
        for e in examples
    ]
    end = per_pair.filter(pl.col("example") == pl.col("last")).select(
        "model",
        "task",
        "replicates",
        pl.col("last").alias("examples"),
        pl.col("nats").alias("nats at last"),
        pl.col("p_correct").alias("P(A) at last"),
        pl.col("cumulative_bits").alias("I_N (bits)"),
        pl.col("uniform_cumulative_bits").alias("uniform code (bits)"),
        (pl.col("control_cumulative_bits_mean") - pl.col("cumulative_bits")).alias(
            "bits saved vs shuffled control"
        ),
    )
    out = end
    for frame in at:
        out = out.join(frame, on=["model", "task"], how="left")
    columns = ["model", "task", "replicates", "examples"]
    columns += [f"nats at {e}" for e in examples] + ["nats at last", "P(A) at last"]
    columns += ["I_N (bits)", "uniform code (bits)", "bits saved vs shuffled control"]
    return out.select(columns).sort("model", "task")


def bayes_summary(bayes: pl.DataFrame) -> pl.DataFrame:
    """The fitted learner per (model, task, method): c with its interval, θ₀, c − ln 2,
    whether the fit means anything (and why not), and how it compares with the control."""
    wanted = ["model", "task", "method", "c", "c_lo", "c_hi", "theta0", "c_minus_ln2"]
    wanted += ["informative", "fit_note", "r2_vs_flat", "control_c", "c_differs_from_control"]
    wanted += ["rmse", "rmse_units", "n_replicates", "n_examples"]
    return bayes.select(c for c in wanted if c in bayes.columns).sort("model", "task", "method")


def constancy_summary(units: pl.DataFrame) -> pl.DataFrame:
    """Per (method, model, task): c with its interval, ln 2 inside it, and whether the task
    is counted in the comparison of c (and why not)."""
    return units.sort("method", "model", "task").select(
        "method",
        "model",
        "task",
        "c",
        "c_lo",
        "c_hi",
        pl.col("ln2_inside").alias("ln 2 inside"),
        pl.col("p_correct_last").alias("P(A) at last"),
        "informative",
        pl.col("in_verdict").alias("counted"),
        pl.col("excluded_because").alias("not counted because"),
        "control_c",
        "c_differs_from_control",
    )


def constancy_pairs_summary(pairs: pl.DataFrame) -> pl.DataFrame:
    """Per pair of counted units: the difference of c, its interval and the Holm-adjusted test."""
    return pairs.select(
        "method",
        pl.format("{} ({})", "task_a", "model_a").alias("a"),
        pl.format("{} ({})", "task_b", "model_b").alias("b"),
        "c_a",
        "c_b",
        pl.col("difference").alias("c_a − c_b"),
        pl.col("difference_lo").alias("interval lo"),
        pl.col("difference_hi").alias("interval hi"),
        pl.col("intervals_overlap").alias("c intervals overlap"),
        pl.col("p_value").alias("p"),
        pl.col("p_holm").alias("p (Holm)"),
        pl.col("differs").alias("differs"),
    )


def ideal_summary(summary: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task): I_N of the model and of the ideal learner, and the excess bits."""
    return summary.select(
        "model",
        "task",
        pl.col("n_replicates").alias("replicates"),
        pl.col("n_examples").alias("examples"),
        pl.col("model_bits").alias("model I_N (bits)"),
        pl.format(
            "{}–{}", pl.col("model_bits_lo").round(1), pl.col("model_bits_hi").round(1)
        ).alias("model range"),
        pl.col("ideal_bits").alias("ideal I_N (bits)"),
        pl.format(
            "{}–{}", pl.col("ideal_bits_lo").round(1), pl.col("ideal_bits_hi").round(1)
        ).alias("ideal range"),
        pl.col("excess_bits").alias("excess (bits)"),
        pl.col("uniform_bits").alias("uniform code (bits)"),
        pl.col("family_size").alias("rules"),
        pl.col("task_rule_added").alias("task's rule added"),
    )


def probe_summary(probe: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task, k): how often the model writes f(x), writes an integer at all,
    or copies a y its context showed, and the mean P(f(x)), over every query x."""
    return (
        probe.group_by("model", "task", "k")
        .agg(
            pl.len().alias("queries"),
            (pl.col("y_pred") == pl.col("y_true")).fill_null(False).mean().alias("exact"),
            pl.col("y_pred").is_not_null().mean().alias("writes an integer"),
            pl.col("y_pred_in_context").mean().alias("copies a shown y"),
            pl.col("p_correct").mean().alias("mean P(f(x))"),
        )
        .sort("model", "task", "k")
    )


def lens_summary(lens: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task): the first layer whose top-1 token is a number, and the first at
    which the correct answer's first token ranks 1, as median and range over positions."""
    top = lens.filter(pl.col("rank") == 1)
    per_position = top.group_by("model", "task", "replicate", "example").agg(
        pl.col("first_numeric_layer").first(),
        pl.col("layer").filter(pl.col("answer_rank") == 1).min().alias("first_answer_layer"),
        pl.col("layer").max().alias("layers"),
    )

    def spread(column: str, name: str) -> list[pl.Expr]:
        c = pl.col(column)
        return [
            c.median().alias(f"{name} (median)"),
            pl.format("{}–{}", c.min(), c.max()).alias(f"{name} (range)"),
            c.is_null().mean().alias(f"{name}: share never"),
        ]

    return (
        per_position.group_by("model", "task")
        .agg(
            pl.len().alias("positions"),
            pl.col("layers").max(),
            *spread("first_numeric_layer", "first numeric layer"),
            *spread("first_answer_layer", "first layer with f(x) top-1"),
        )
        .sort("model", "task")
    )


def _ranked(frame: pl.DataFrame, value: str, descending: bool, n: int) -> pl.DataFrame:
    """The n heads with the largest (or smallest) mean `value`, as 'layer.head (value)'."""
    return (
        frame.sort(value, descending=descending)
        .group_by("model", "task", maintain_order=True)
        .head(n)
        .group_by("model", "task", maintain_order=True)
        .agg(
            pl.format("{}.{} ({})", "layer", "head", pl.col(value).round(3))
            .str.join(", ")
            .alias(value)
        )
    )


def head_effects(heads: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task, layer, head) with an ablation: the mean effect, the mean smallest
    change the floor resolves, and whether the mean effect exceeds it (`resolved`)."""
    return (
        heads.filter(pl.col("component") == "head", pl.col("effect").is_not_null())
        .group_by("model", "task", "layer", "head")
        .agg(pl.col("effect", "effect_floor").mean())
        .with_columns((pl.col("effect").abs() > pl.col("effect_floor")).alias("resolved"))
    )


def heads_summary(heads: pl.DataFrame, n: int = 3) -> pl.DataFrame:
    """Per (model, task): the heads that write most of the answer's logit (mean direct
    contribution at the decision position) and, where ablations ran, the heads whose
    mean-ablation lowers P(answer) most, among those whose mean effect the numerical floor
    resolves (how many do is a column of its own)."""
    per_head = (
        heads.filter(pl.col("component") == "head")
        .group_by("model", "task", "layer", "head")
        .agg(pl.col("contribution").mean())
    )
    out = _ranked(per_head, "contribution", True, n).rename(
        {"contribution": f"top {n} direct (logit)"}
    )
    effects = head_effects(heads)
    if effects.height:
        hurt = _ranked(effects.filter("resolved"), "effect", False, n).rename(
            {"effect": f"top {n} ablation (ΔP)"}
        )
        counts = effects.group_by("model", "task").agg(
            pl.format("{} of {}", pl.col("resolved").sum(), pl.len()).alias(
                "ablations above the floor"
            )
        )
        out = out.join(hurt, on=["model", "task"], how="left").join(
            counts, on=["model", "task"], how="left"
        )
    return out.sort("model", "task")


def _runs(windows: pl.DataFrame, column: str) -> pl.DataFrame:
    """Contiguous layer runs where `column` holds, joined as '21–23, 25' per (model, task)."""
    runs = leading_runs(windows, column)
    return runs.group_by("model", "task").agg(
        pl.when(pl.col("first") == pl.col("last"))
        .then(pl.col("first").cast(pl.String))
        .otherwise(pl.format("{}–{}", "first", "last"))
        .sort_by("first")
        .str.join(", ")
        .alias(column.replace("_", " "))
    )


def patching_summary(windows: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task): the layers at which patching in the source's stream makes the target
    answer the source's task (task leads) or the source's answer (answer leads), and the
    largest mean P(f(x_target)) with its layer."""
    best = (
        windows.sort("p_task", descending=True)
        .group_by("model", "task", maintain_order=True)
        .first()
        .select(
            "model",
            "task",
            "n_layers",
            pl.col("p_task").alias("max mean p_task"),
            pl.col("layer").alias("at layer"),
            pl.col("source_p_answer").alias("source P(own answer)"),
        )
    )
    for column in ("task_leads", "answer_leads"):
        best = best.join(_runs(windows, column), on=["model", "task"], how="left")
    return best.sort("model", "task")


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.3f}"
    return html.escape(str(value))


def write_html_table(table: pl.DataFrame, path: str | Path, title: str, description: str) -> Path:
    """A standalone, readable HTML page holding `table`, its title and a description."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in table.iter_rows()
    )
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f0f0f0; }}
td:nth-child(-n+3), th:nth-child(-n+3) {{ text-align: left; }}
p {{ max-width: 60em; }}
</style></head>
<body><h2>{html.escape(title)}</h2><p>{html.escape(description)}</p>
<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></body></html>
"""
    path = Path(path)
    with atomic_output(path, suffix=".html") as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


# Stage -> (summary function, page title, what the columns mean).
STAGE_SUMMARIES = {
    "probe": (
        probe_summary,
        "Probe: what the model writes after k examples",
        (
            "Over every query x of the task's range and the probed replicates. exact: share of "
            "queries answered with f(x); writes an integer: share answered with an integer "
            "followed by the terminator; copies a shown y: share answered with a y one of the k "
            "examples showed; mean P(f(x)): mean probability of the correct answer span."
        ),
    ),
    "lens": (
        lens_summary,
        "Logit lens: where a number, and the answer, first come out on top",
        (
            "Over the lens's read positions (the token before each answer). Layer 0 is the "
            "embedding, layer L the model's output. first numeric layer: the first layer whose "
            "top-1 token is a number; first layer with f(x) top-1: the first at which the correct "
            "answer's first token ranks 1; share never: positions where no layer does."
        ),
    ),
    "heads": (
        heads_summary,
        "Heads: who writes the answer",
        (
            "Heads named layer.head. Direct: mean contribution to the answer token's centred "
            "logit at the decision position (logits). Ablation: mean change of P(answer span) when "
            "the head's output there is replaced by its mean over other replicates (negative: the "
            "head helps), ranked among the heads whose change exceeds the numerical floor (the "
            "float32 disagreement of the batched path with a plain pass, measured in each job); "
            "'ablations above the floor' counts them."
        ),
    ),
    "patching": (
        patching_summary,
        "Patching: where the task, and where the answer, live",
        (
            "The source prompt's residual stream at one layer replaces the target's at the "
            "decision position. task leads: layers where the target then most often answers the "
            "source's task applied to its own x (mean P above the source's answer and the target's "
            "own by more than the numerical floor); answer leads: layers where it most often "
            "copies the source's answer; empty: no such layer. source P(own answer): how well the "
            "source itself does its task."
        ),
    ),
}
