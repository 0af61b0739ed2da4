"""Where the task, and where the answer, lead across layers: the patching table summarised.

Pure Polars over `results/patching/*` tables (no torch), so the windows rule
and the report's summary table do not load the model stack.
"""

from __future__ import annotations

import polars as pl

# Where earlier work saw the task carried by the residual stream, as fractions of depth.
HENDEL_2023 = (0.40, 0.45)  # task vectors in GPT-J and LLaMA-7B (Hendel et al. 2023)
SEED_LAYERS = (12, 15, 30)  # the seed essay: layers 12–15 of SmolLM2's 30


def windows(table: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task, layer): mean probabilities and which answer leads.

    Means run over the pairs whose unpatched target answers something other
    than f(x_t) and f(x_s) (`default_distinct`), so that the three probabilities
    are of three answers. `task_leads`: mean p_task exceeds both mean p_answer
    and mean p_target_default (or there is no target answer to exceed) by more
    than the job's numerical floor (`floor_nats`: its log exceeds theirs by
    more, `iclprobe.floor`); `answer_leads` likewise for p_answer.
    """
    keys = ["model", "task", "target_context", "layer", "n_layers", "relative_depth"]
    means = (
        table.filter("default_distinct")
        .group_by(keys)
        .agg(
            pl.len().alias("n_pairs"),
            pl.col("p_task", "p_answer", "p_target_default").mean(),
            pl.col("source_p_answer").mean(),
            pl.col("floor_nats").max(),
        )
    )
    default = pl.col("p_target_default")
    margin = pl.col("floor_nats").fill_null(0.0).exp()

    def leads(this: str, other: str) -> pl.Expr:
        above = pl.col(this) > pl.col(other) * margin
        return above & (default.is_null() | (pl.col(this) > default * margin))

    return means.with_columns(
        leads("p_task", "p_answer").alias("task_leads"),
        leads("p_answer", "p_task").alias("answer_leads"),
    ).sort("model", "task", "layer")


def leading_runs(windows_table: pl.DataFrame, column: str = "task_leads") -> pl.DataFrame:
    """Contiguous runs of layers where `column` holds: model, task, first, last (layers)."""
    return (
        windows_table.sort("model", "task", "layer")
        .with_columns(
            (pl.col(column) != pl.col(column).shift(1).over("model", "task"))
            .fill_null(True)
            .cum_sum()
            .over("model", "task")
            .alias("run")
        )
        .filter(column)
        .group_by("model", "task", "run", "n_layers")
        .agg(pl.col("layer").min().alias("first"), pl.col("layer").max().alias("last"))
        .drop("run")
        .sort("model", "task", "first")
    )
