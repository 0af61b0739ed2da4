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
