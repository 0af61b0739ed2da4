"""Is c a constant? The fitted sensitivity c compared across learned tasks and models.

A (model, task) counts, for one fitting method, when the model learned the task: its mean
P(A) at the last example reaches `min_p_correct` (0.5 by default) and that method's fit is
informative (iclprobe.bayes). Shuffled controls, unlearned tasks and uninformative fits are
listed with the reason they are left out, never compared.

Between every two counted units of one method the test of equal c resamples each unit's
replicates on its own (they are independent draws), refits c on each resample
(`bayes.bootstrap_cs`) and takes the difference of the two draws. The two-sided p-value is
the share of differences on the far side of 0, doubled, with the usual +1 correction:
p = min(1, 2·min(#{d ≤ 0} + 1, #{d ≥ 0} + 1) / (B + 1)). Its smallest value is 2/(B + 1).
The p-values of one method's pairs are corrected together by Holm's step-down method, which
keeps the family-wise error rate at `alpha`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time

import numpy as np
import polars as pl

from iclprobe.bayes import METHODS, bootstrap_cs, p_correct_curves

CORRECTION = "holm"

log = logging.getLogger(__name__)

UNIT_SCHEMA = {
    "model": pl.String,
    "task": pl.String,
    "method": pl.String,
    "c": pl.Float64,
    "c_lo": pl.Float64,
    "c_hi": pl.Float64,
    "interval_level": pl.Float64,
    "ln2_inside": pl.Boolean,
    "informative": pl.Boolean,
    "fit_note": pl.String,
    "control": pl.String,
    "control_task": pl.String,
    "control_c": pl.Float64,
    "control_c_lo": pl.Float64,
    "control_c_hi": pl.Float64,
    "c_differs_from_control": pl.Boolean,
    "n_examples": pl.Int64,
    "p_correct_last": pl.Float64,
    "learned": pl.Boolean,
    "in_verdict": pl.Boolean,
    "excluded_because": pl.String,
    "reasons": pl.List(pl.String),  # the same, one reason per item, the most basic first
    "min_p_correct": pl.Float64,
}


def units(bayes: pl.DataFrame, surprisal: pl.DataFrame, min_p_correct: float) -> pl.DataFrame:
    """One row per (model, task, method): c with its interval, and whether it is compared.

    `bayes` is results/bayes.parquet (fits beside their controls), `surprisal` the
    per-replicate rows of results/surprisal.parquet. `learned`: the mean P(A) at the last
    example reaches `min_p_correct`; `in_verdict`: learned, not a control and an
    informative fit; otherwise `excluded_because` says why (`reasons`: one item per reason,
    in the order a control, not learned, not informative, c as its control's).
    """
    if not 0.0 <= min_p_correct <= 1.0:
        raise ValueError(f"min_p_correct must lie within [0, 1], got {min_p_correct!r}")
    last = (
        surprisal.filter(pl.col("example") == pl.col("example").max().over("model", "task"))
        .group_by("model", "task")
        .agg(
            pl.col("example").first().alias("n_examples"),
            pl.col("p_correct").mean().alias("p_correct_last"),
            pl.col("control").first(),
        )
    )
    for column in ("control_task", "control_c", "control_c_lo", "control_c_hi"):
        if column not in bayes.columns:
            bayes = bayes.with_columns(pl.lit(None).alias(column))
    if "c_differs_from_control" not in bayes.columns:
        bayes = bayes.with_columns(c_differs_from_control=pl.lit(None, pl.Boolean))
    table = bayes.join(last, on=["model", "task"], how="left").with_columns(
        learned=pl.col("p_correct_last") >= min_p_correct,
        min_p_correct=pl.lit(min_p_correct),
    )
    unmatched = table.filter(pl.col("p_correct_last").is_null()).select("model", "task").unique()
    if unmatched.height:
        raise ValueError(
            f"no surprisal rows for the fits of {sorted(unmatched.iter_rows())}: whether a task "
            "is learned is read from its P(A) at the last example"
        )
    reasons = pl.concat_list(
        pl.when(pl.col("control").is_not_null()).then(
            pl.format("a {} control: no rule to learn", pl.col("control"))
        ),
        pl.when(~pl.col("learned")).then(
            pl.format(
                "not learned: mean P(A) at example {} is {} < {}",
                "n_examples",
                pl.col("p_correct_last").round_sig_figs(2),
                pl.lit(f"{min_p_correct:g}"),
            )
        ),
        pl.when(~pl.col("informative")).then(pl.format("fit not informative: {}", "fit_note")),
        pl.when(~pl.col("c_differs_from_control")).then(  # null (no interval) is no reason
            pl.format("its c does not differ from its control {}'s", "control_task")
        ),
    ).list.drop_nulls()
    return (
        table.with_columns(reasons=reasons, excluded_because=reasons.list.join("; "))
        .with_columns(
            in_verdict=pl.col("reasons").list.len() == 0,
            excluded_because=pl.when(pl.col("excluded_because") != "").then("excluded_because"),
        )
        .select(list(UNIT_SCHEMA))
        .cast(UNIT_SCHEMA)
        .sort("method", "model", "task")
    )


def unit_seed(seed: int, model: str, task: str, method: str) -> int:
    """A stable seed per (model, task, method), so that units resample independently."""
    digest = hashlib.sha256(f"{seed}/{model}/{task}/{method}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def two_sided_p(differences: np.ndarray) -> float:
    """Bootstrap p-value of "the difference is 0": the far tail doubled, +1 corrected."""
    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        return math.nan
    below, above = int(np.sum(d <= 0)), int(np.sum(d >= 0))
    return min(1.0, 2 * (min(below, above) + 1) / (d.size + 1))


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate), in the input's order."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])  # (m - rank) * p_(rank)
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted


PAIR_SCHEMA = {
    "method": pl.String,
    "model_a": pl.String,
    "task_a": pl.String,
    "model_b": pl.String,
    "task_b": pl.String,
    "c_a": pl.Float64,
    "c_b": pl.Float64,
    "difference": pl.Float64,
    "difference_lo": pl.Float64,
    "difference_hi": pl.Float64,
    "intervals_overlap": pl.Boolean,
    "p_value": pl.Float64,
    "p_holm": pl.Float64,
    "differs": pl.Boolean,
    "alpha": pl.Float64,
    "correction": pl.String,
    "n_boot": pl.Int64,
    "interval_level": pl.Float64,
}


def pairwise_tests(
    unit_table: pl.DataFrame,
    surprisal: pl.DataFrame,
    *,
    n_boot: int,
    seed: int,
    alpha: float,
    level: float,
) -> pl.DataFrame:
    """The test of equal c between every two units in the verdict, per method.

    `difference` is c_a − c_b of the fits; `difference_lo`–`difference_hi` its bootstrap
    percentile interval at `level`; `p_holm` the Holm-adjusted p-value over the method's
    pairs, and `differs` whether it is below `alpha`.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")
    counted = unit_table.filter(pl.col("in_verdict"))
    rows = []
    for method in [m for m in METHODS if m in set(counted["method"].to_list())]:
        mine = counted.filter(pl.col("method") == method).sort("model", "task")
        draws = {}
        for unit in mine.iter_rows(named=True):
            key = (unit["model"], unit["task"])
            curves = p_correct_curves(
                surprisal.filter((pl.col("model") == key[0]) & (pl.col("task") == key[1]))
            )
            started = time.monotonic()
            draws[key] = bootstrap_cs(curves, method, n_boot, unit_seed(seed, *key, method))
            log.info(
                "%s: %d resamples of c for %s / %s in %.1f s",
                method, n_boot, key[0], key[1], time.monotonic() - started,
            )  # fmt: skip
        pairs = list(itertools.combinations(mine.iter_rows(named=True), 2))
        p_values = []
        for a, b in pairs:
            d = draws[(a["model"], a["task"])] - draws[(b["model"], b["task"])]
            tail = (1 - level) / 2
            lo, hi = np.quantile(d, [tail, 1 - tail]) if d.size else (math.nan, math.nan)
            p_values.append(two_sided_p(d))
            overlap = None
            if None not in (a["c_lo"], a["c_hi"], b["c_lo"], b["c_hi"]):
                overlap = not (a["c_lo"] > b["c_hi"] or a["c_hi"] < b["c_lo"])
            rows.append(
                {
                    "method": method,
                    "model_a": a["model"],
                    "task_a": a["task"],
                    "model_b": b["model"],
                    "task_b": b["task"],
                    "c_a": a["c"],
                    "c_b": b["c"],
                    "difference": a["c"] - b["c"],
                    "difference_lo": float(lo),
                    "difference_hi": float(hi),
                    "intervals_overlap": overlap,
                }
            )
        adjusted = holm(np.array(p_values))
        for row, p, q in zip(rows[len(rows) - len(pairs) :], p_values, adjusted, strict=True):
            row.update(p_value=p, p_holm=float(q), differs=bool(q < alpha))
    common = {
        "alpha": alpha,
        "correction": CORRECTION,
        "n_boot": n_boot,
        "interval_level": level,
    }
    return pl.DataFrame([{**row, **common} for row in rows], schema=PAIR_SCHEMA)
