"""Surprisal and the information needed to learn a task, with Polars.

Per replicate: s_i = −log P_{i−1}(y_i) in nats and bits, and the prequential
code length I_k = Σ_{i≤k} s_i. Across replicates: means, percentile intervals,
the uniform code (log |Y| per example) and, where a shuffled twin of the task
exists, the same curve for the control (the null with no rule to learn).
"""

from __future__ import annotations

import math

import polars as pl

LOG2E = 1 / math.log(2)


def per_replicate(forward: pl.DataFrame) -> pl.DataFrame:
    """Surprisal columns for each (model, task, replicate, example) of forward tables."""
    return (
        forward.select(
            "model",
            "task",
            "replicate",
            "example",
            "x",
            "y",
            "n_answer_tokens",
            "logprob",
            "n_candidates",
            "control",
            "greedy_correct",
        )
        .sort("model", "task", "replicate", "example")
        .with_columns(
            surprisal_nats=-pl.col("logprob"),
            surprisal_bits=-pl.col("logprob") * LOG2E,
            p_correct=pl.col("logprob").exp(),
        )
        .with_columns(
            # Per curve: a frame may hold several models and tasks.
            cumulative_bits=pl.col("surprisal_bits").cum_sum().over("model", "task", "replicate"),
            uniform_bits=pl.col("n_candidates").cast(pl.Float64).log(2),
        )
        .with_columns(uniform_cumulative_bits=pl.col("uniform_bits") * pl.col("example"))
    )


def _band(column: str, level: float) -> list[pl.Expr]:
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return [
        pl.col(column).mean().alias(f"{column}_mean"),
        pl.col(column).quantile(lo, "linear").alias(f"{column}_lo"),
        pl.col(column).quantile(hi, "linear").alias(f"{column}_hi"),
    ]


def summary(
    surprisal: pl.DataFrame, controls: dict[str, str] | None = None, level: float = 0.95
) -> pl.DataFrame:
    """The table over all models and tasks: per-replicate rows plus example-level stats.

    Each row keeps its replicate's values (the columns of DESIGN.md) and gains the
    mean and percentile interval over replicates of surprisal, cumulative bits and
    P(A) at its (model, task, example); `controls` maps a task to its shuffled twin,
    whose mean surprisal is joined in as `control_*` columns.
    """
    group = ["model", "task", "example"]
    stats = surprisal.group_by(group).agg(
        *_band("surprisal_bits", level),
        *_band("cumulative_bits", level),
        *_band("p_correct", level),
        pl.len().alias("n_replicates"),
    )
    controls = controls or {}
    control_map = pl.DataFrame(
        {"task": list(controls), "control_task": list(controls.values())},
        schema={"task": pl.String, "control_task": pl.String},
    )
    control_stats = stats.select(
        "model",
        pl.col("task").alias("control_task"),
        "example",
        pl.col("surprisal_bits_mean").alias("control_surprisal_bits_mean"),
        pl.col("cumulative_bits_mean").alias("control_cumulative_bits_mean"),
    )
    return (
        surprisal.join(stats, on=group, how="left")
        .join(control_map, on="task", how="left")
        .join(control_stats, on=["model", "control_task", "example"], how="left")
        .with_columns(
            bits_saved_vs_control=pl.col("control_cumulative_bits_mean")
            - pl.col("cumulative_bits_mean"),
            interval_level=pl.lit(level),
        )
        .sort("model", "task", "replicate", "example")
    )
