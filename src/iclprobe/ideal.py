"""The ideal learner: a Bayes-optimal reference that knows a declared family of rules.

Its hypotheses are every rule h of a family H and "none of these". H holds the integer
affine rules y = a·x + b over a grid of slopes a and intercepts b, plus the task's own
rule when it is not one of them on the task's x range (e.g. ``x // 10``). Each rule has
prior (1 − ε)/|H| and likelihood 1 when h(x) = y, else 0; "none of these" has prior ε and
gives every one of the task's |Y| candidate answers probability 1/|Y|. After examples
1 … i−1 its predictive for example i is

    P_i(y) = Σ_h π_h [h(x_i) = y] + π_none / |Y|

with π the posterior. With a uniform prior over the rules, the probability of the first
i−1 examples is

    Z_i = (1 − ε) · n_{i−1} / |H| + ε · |Y|^−(i−1),

where n_k counts the rules consistent with the first k examples, and P_i(y_i) = Z_{i+1} / Z_i
exactly. The information it needs, I_N = Σ_i −log₂ P_i(y_i) = −log₂ Z_{N+1}, is about
log₂ |H| bits for a rule in H and the uniform code N·log₂ |Y| when no rule survives (the
shuffled control). It reads the prompts the model saw and needs no model at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl

from iclprobe.config import Task

LOG2E = 1 / math.log(2)

# Slopes are checked in chunks of about this many (replicate, slope, example) cells, so that
# memory stays bounded (~4 M cells, ~100 MB of intermediates) whatever the grid.
CHUNK_CELLS = 2**22

# Columns the per-task table adds to the prompts' (task, replicate, example, x, y).
IDEAL_COLUMNS = (
    "rules_consistent_before",
    "none_posterior",
    "ideal_p_correct",
    "ideal_surprisal_nats",
    "ideal_surprisal_bits",
    "ideal_cumulative_bits",
)


@dataclass(frozen=True)
class AffineFamily:
    """Integer rules a·x + b with a in [slopes] and b in [intercepts] (inclusive)."""

    slopes: tuple[int, int]
    intercepts: tuple[int, int]

    @property
    def size(self) -> int:
        (a_lo, a_hi), (b_lo, b_hi) = self.slopes, self.intercepts
        return (a_hi - a_lo + 1) * (b_hi - b_lo + 1)

    def describe(self) -> str:
        (a_lo, a_hi), (b_lo, b_hi) = self.slopes, self.intercepts
        return f"a·x + b, a in {a_lo}…{a_hi}, b in {b_lo}…{b_hi}"

    def contains(self, xs: np.ndarray, ys: np.ndarray) -> bool:
        """Whether some rule of the family gives ys at every x of xs (at least two distinct x)."""
        xs, ys = np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.int64)
        if np.unique(xs).size < 2:
            raise ValueError("a rule is only determined by at least two distinct x values")
        i, j = 0, int(np.argmax(xs != xs[0]))
        rise, run = int(ys[j] - ys[i]), int(xs[j] - xs[i])
        if rise % run:
            return False
        a = rise // run
        b = int(ys[i] - a * xs[i])
        (a_lo, a_hi), (b_lo, b_hi) = self.slopes, self.intercepts
        return bool(np.all(a * xs + b == ys)) and a_lo <= a <= a_hi and b_lo <= b <= b_hi

    def consistent_counts(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """n[r, k]: rules of the family consistent with examples 1..k of replicate r, k = 0..N.

        Each slope a admits one intercept per example, b = y − a·x; a rule survives k
        examples when that intercept is the same for all of them and on the grid. This
        costs O(R · |slopes| · N) instead of enumerating every (a, b).
        """
        xs, ys = np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.int64)  # (R, N)
        slopes = np.arange(self.slopes[0], self.slopes[1] + 1, dtype=np.int64)  # (A,)
        b_lo, b_hi = self.intercepts
        counts = np.zeros(xs.shape, dtype=np.int64)  # (R, N): consistent after examples 1..k
        chunk = max(1, CHUNK_CELLS // max(1, xs.size))  # slopes per pass
        for start in range(0, slopes.size, chunk):
            a = slopes[start : start + chunk]  # (A,)
            b = ys[:, None, :] - a[None, :, None] * xs[:, None, :]  # (R, A, N) b per example
            first = b[:, :, :1]  # (R, A, 1) the intercept the first example allows
            on_grid = (first >= b_lo) & (first <= b_hi)
            alive = np.logical_and.accumulate((b == first) & on_grid, axis=2)  # (R, A, N)
            counts += alive.sum(axis=1)
        start = np.full((xs.shape[0], 1), self.size, dtype=np.int64)
        return np.concatenate([start, counts], axis=1)  # (R, N + 1)


def log_evidence(counts: np.ndarray, family_size: int, n_answers: int, none_prior: float):
    """log Z_i for i = 1..N+1: the probability of the first i−1 examples, in nats.

    `counts` is (R, N + 1) rules consistent with the first k examples (k = 0..N) out of
    `family_size`; "none of these" gives each of `n_answers` answers 1/n_answers.
    """
    _check_none_prior(none_prior)
    k = np.arange(counts.shape[1])  # examples seen
    with np.errstate(divide="ignore"):  # no rule left: log 0 = -inf, the other term carries it
        rules = math.log1p(-none_prior) + np.log(counts) - math.log(family_size)
    none = math.log(none_prior) - k * math.log(n_answers)  # (N + 1,)
    return np.logaddexp(rules, none[None, :]), none[None, :]


def _check_none_prior(none_prior: float) -> None:
    if not 0.0 < none_prior < 1.0:
        raise ValueError(f"none_prior must lie strictly between 0 and 1, got {none_prior!r}")


def ideal_learner(
    prompts: pl.DataFrame,
    task: Task,
    family: AffineFamily,
    none_prior: float,
    include_task_rule: bool,
) -> pl.DataFrame:
    """The ideal learner's predictive of every answer of `prompts` (one task's prompt table).

    Returns one row per (replicate, example) with the prompts' x and y, how many rules were
    still consistent before the example, the posterior of "none of these", its P_i(y_i),
    surprisal and cumulative information I_i, the family it used and whether the task's
    own rule was added to it (`task_rule_added`; `family_size` counts it).
    """
    _check_none_prior(none_prior)
    table = prompts.select(
        "task", "replicate", "example", "x", "y", "n_candidates", "control"
    ).sort("replicate", "example")
    n_replicates = table["replicate"].n_unique()
    n_examples = table["example"].n_unique()
    if table.height != n_replicates * n_examples:
        raise ValueError("each replicate must have every example exactly once")
    n_answers = table["n_candidates"].unique().to_list()
    if len(n_answers) != 1:
        raise ValueError(f"one number of candidate answers per task expected, got {n_answers}")
    xs = table["x"].to_numpy().reshape(n_replicates, n_examples)  # (R, N)
    ys = table["y"].to_numpy().reshape(n_replicates, n_examples)  # (R, N)

    counts = family.consistent_counts(xs, ys)  # (R, N + 1)
    domain = np.array(task.xs, dtype=np.int64)
    rule_values = np.array(task.fn.values(task.xs), dtype=np.int64)
    add_rule = include_task_rule and not family.contains(domain, rule_values)
    size = family.size + int(add_rule)
    if add_rule:
        own = rule_values[xs - task.x_low] == ys  # (R, N) the task's rule holds at example i
        alive = np.logical_and.accumulate(own, axis=1)
        counts = counts + np.concatenate([np.ones((n_replicates, 1), int), alive], axis=1)

    log_z, log_none = log_evidence(counts, size, n_answers[0], none_prior)  # (R, N + 1)
    nats = log_z[:, :-1] - log_z[:, 1:]  # (R, N) −log P_i(y_i) = log Z_i − log Z_{i+1}
    bits = nats * LOG2E
    return table.with_columns(
        rules_consistent_before=pl.Series(counts[:, :-1].ravel()),
        none_posterior=pl.Series(np.exp(log_none - log_z)[:, :-1].ravel()),
        ideal_p_correct=pl.Series(np.exp(-nats).ravel()),
        ideal_surprisal_nats=pl.Series(nats.ravel()),
        ideal_surprisal_bits=pl.Series(bits.ravel()),
        ideal_cumulative_bits=pl.Series(np.cumsum(bits, axis=1).ravel()),
        family=pl.lit(family.describe()),
        family_size=pl.lit(size, dtype=pl.Int64),
        task_rule_added=pl.lit(add_rule),
        task_function=pl.lit(task.function),
        none_prior=pl.lit(none_prior),
    )


def beside_model(surprisal: pl.DataFrame, ideal: pl.DataFrame) -> pl.DataFrame:
    """The model's surprisal rows beside the ideal learner's on the same prompts.

    `surprisal` may hold several models and tasks; `ideal` one or more tasks. Every model
    row must find the ideal learner's row of the same (task, replicate, example) with the
    same x and y, or the two did not see the same prompts. Adds the model's excess:
    `excess_bits` (per example) and `excess_cumulative_bits` (I_i(model) − I_i(ideal)).
    """
    wanted = ["task", "replicate", "example", "x", "y", *IDEAL_COLUMNS]
    wanted += ["family", "family_size", "task_rule_added", "task_function", "none_prior"]
    joined = surprisal.join(
        ideal.select(wanted).rename({"x": "ideal_x", "y": "ideal_y"}),
        on=["task", "replicate", "example"],
        how="left",
    )
    unmatched = joined.filter(
        pl.col("ideal_x").is_null()
        | (pl.col("ideal_x") != pl.col("x"))
        | (pl.col("ideal_y") != pl.col("y"))
    )
    if unmatched.height:
        row = unmatched.row(0, named=True)
        raise ValueError(
            f"the ideal learner did not see the model's prompt: model {row['model']!r}, task "
            f"{row['task']!r}, replicate {row['replicate']}, example {row['example']} has "
            f"(x, y) = ({row['x']}, {row['y']}), the ideal table "
            f"({row['ideal_x']}, {row['ideal_y']}); rerun both from the same prompts"
        )
    return (
        joined.drop("ideal_x", "ideal_y")
        .with_columns(
            excess_bits=pl.col("surprisal_bits") - pl.col("ideal_surprisal_bits"),
            excess_cumulative_bits=pl.col("cumulative_bits") - pl.col("ideal_cumulative_bits"),
        )
        .sort("model", "task", "replicate", "example")
    )


def information_summary(table: pl.DataFrame, level: float = 0.95) -> pl.DataFrame:
    """Per (model, task): I_N of the model and of the ideal learner at the last example.

    Means over replicates with the central `level` percentile interval, the model's excess
    bits, the uniform code N·log₂|Y| and the ideal learner's family.
    """
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    last = table.filter(pl.col("example") == pl.col("example").max().over("model", "task"))

    def band(column: str, name: str) -> list[pl.Expr]:
        c = pl.col(column)
        return [
            c.mean().alias(name),
            c.quantile(lo, "linear").alias(f"{name}_lo"),
            c.quantile(hi, "linear").alias(f"{name}_hi"),
        ]

    return (
        last.group_by("model", "task")
        .agg(
            pl.col("example").first().alias("n_examples"),
            pl.len().alias("n_replicates"),
            pl.col("control").first(),
            *band("cumulative_bits", "model_bits"),
            *band("ideal_cumulative_bits", "ideal_bits"),
            *band("excess_cumulative_bits", "excess_bits"),
            pl.col("uniform_cumulative_bits").first().alias("uniform_bits"),
            pl.col("family").first(),
            pl.col("family_size").first(),
            pl.col("task_rule_added").first(),
            pl.col("task_function").first(),
            pl.col("none_prior").first(),
        )
        .with_columns(
            log2_family_size=pl.col("family_size").cast(pl.Float64).log(2),
            interval_level=pl.lit(level),
        )
        .sort("model", "task")
    )
