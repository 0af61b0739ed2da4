"""Is c a constant? Which fits are compared, and the bootstrap test of equal c."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest
from scipy.special import expit, logit

from iclprobe.bayes import LN2, compare_with_controls, fit_table, simulate_learner
from iclprobe.constancy import holm, pairwise_tests, two_sided_p, units

N = 20


def _rows(model, task, c, theta0, n_rep=10, sd=0.25, seed=0, control=None) -> pl.DataFrame:
    """Surprisal rows whose P(A) is the learner's curve with log-odds noise per replicate."""
    rng = np.random.default_rng(seed)
    p = expit(logit(simulate_learner(c, theta0, N)) + rng.normal(0, sd, size=(n_rep, N)))
    replicate, example = np.divmod(np.arange(n_rep * N), N)
    return pl.DataFrame(
        {
            "model": model,
            "task": task,
            "replicate": replicate + 1,
            "example": example + 1,
            "surprisal_nats": -np.log(p).ravel(),
            "p_correct": p.ravel(),
            "control": pl.Series([control] * (n_rep * N), dtype=pl.String),
        }
    )


@pytest.fixture(scope="module")
def run():
    """Two tasks learned at one rate, one faster, one not learned, and a shuffled control."""
    surprisal = pl.concat(
        [
            _rows("m", "slow_a", 0.60, 0.02, seed=1),
            _rows("m", "slow_b", 0.60, 0.02, seed=2),
            _rows("m", "fast", 0.75, 0.02, seed=3),
            _rows("m", "flat", 0.51, 0.02, seed=4),
            _rows("m", "flat_shuffled", 0.51, 0.02, seed=5, control="shuffled"),
        ]
    )
    bayes = compare_with_controls(fit_table(surprisal, n_boot=200), {"flat": "flat_shuffled"})
    table = units(bayes, surprisal, 0.5)
    return (
        surprisal,
        table,
        pairwise_tests(table, surprisal, n_boot=400, seed=0, alpha=0.05, level=0.95),
    )


def test_only_learned_tasks_with_informative_fits_are_counted(run):
    _, table, _ = run
    prob = {
        r["task"]: r for r in table.filter(pl.col("method") == "prob_mse").iter_rows(named=True)
    }
    assert {t for t, r in prob.items() if r["in_verdict"]} == {"slow_a", "slow_b", "fast"}
    assert prob["flat"]["excluded_because"].startswith("not learned: mean P(A) at example 20 is")
    assert "< 0.5" in prob["flat"]["excluded_because"]
    assert prob["flat_shuffled"]["excluded_because"].startswith("a shuffled control")
    assert prob["fast"]["excluded_because"] is None
    # P(A) at the last example is the mean over replicates of the surprisal table's.
    last = run[0].filter(pl.col("task") == "fast", pl.col("example") == N)["p_correct"].mean()
    assert prob["fast"]["p_correct_last"] == pytest.approx(last)


def test_an_uninformative_fit_is_left_out_with_its_note():
    surprisal = _rows("m", "t", 0.7, 0.05, seed=1)
    bayes = fit_table(surprisal, n_boot=50).with_columns(
        informative=pl.col("method") == "prob_mse",
        fit_note=pl.when(pl.col("method") == "prob_mse").then(pl.lit("")).otherwise(pl.lit("flat")),
    )
    table = units(bayes, surprisal, 0.5).sort("method")
    assert table["in_verdict"].to_list() == [False, True]  # logodds, prob_mse
    assert table["excluded_because"][0] == "fit not informative: flat"


def test_equal_c_is_not_rejected_and_a_different_c_is(run):
    _, _, pairs = run
    prob = pairs.filter(pl.col("method") == "prob_mse")
    verdict = {(r["task_a"], r["task_b"]): r for r in prob.iter_rows(named=True)}
    assert set(verdict) == {("fast", "slow_a"), ("fast", "slow_b"), ("slow_a", "slow_b")}
    assert not verdict[("slow_a", "slow_b")]["differs"]
    assert verdict[("fast", "slow_a")]["differs"] and verdict[("fast", "slow_b")]["differs"]
    assert verdict[("fast", "slow_a")]["difference_lo"] > 0  # c_fast − c_slow, interval above 0
    for row in prob.iter_rows(named=True):
        assert row["p_holm"] >= row["p_value"]
        assert row["difference_lo"] < row["difference_hi"]
        assert row["correction"] == "holm" and row["n_boot"] == 400


def test_overlap_is_read_from_the_two_intervals(run):
    _, table, pairs = run
    c = {
        r["task"]: (r["c_lo"], r["c_hi"])
        for r in table.filter(pl.col("method") == "logodds").iter_rows(named=True)
    }
    for row in pairs.filter(pl.col("method") == "logodds").iter_rows(named=True):
        (a_lo, a_hi), (b_lo, b_hi) = c[row["task_a"]], c[row["task_b"]]
        assert row["intervals_overlap"] == (a_lo <= b_hi and b_lo <= a_hi)


def test_pairs_are_only_between_counted_units_of_one_method(run):
    _, table, pairs = run
    for method in ("prob_mse", "logodds"):
        counted = table.filter(pl.col("method") == method, pl.col("in_verdict"))["task"].sort()
        expected = set(itertools.combinations(counted.to_list(), 2))
        mine = pairs.filter(pl.col("method") == method)
        assert set(mine.select("task_a", "task_b").iter_rows()) == expected


def test_a_fit_without_surprisal_rows_is_refused(run):
    surprisal = run[0]
    bayes = fit_table(surprisal.filter(pl.col("task") == "fast"), n_boot=20)
    with pytest.raises(ValueError, match=r"no surprisal rows for the fits of \[\('m', 'fast'\)\]"):
        units(bayes, surprisal.filter(pl.col("task") != "fast"), 0.5)


def test_no_pair_without_two_counted_units():
    surprisal = _rows("m", "t", 0.7, 0.05, seed=1)
    table = units(fit_table(surprisal, n_boot=50), surprisal, 0.5)
    pairs = pairwise_tests(table, surprisal, n_boot=50, seed=0, alpha=0.05, level=0.95)
    assert pairs.height == 0
    assert "p_holm" in pairs.columns


def test_holm_against_a_hand_computed_example():
    # Sorted p: 0.01 (x3), 0.03 (x2), 0.04 (x1) -> 0.03, 0.06, then max(0.06, 0.04) = 0.06.
    np.testing.assert_allclose(holm(np.array([0.01, 0.04, 0.03])), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm(np.array([0.5, 0.6])), [1.0, 1.0])
    assert holm(np.array([])).size == 0


def test_two_sided_p():
    assert two_sided_p(np.ones(999)) == pytest.approx(2 / 1000)  # every draw on one side
    assert two_sided_p(np.linspace(-1, 1, 1001)) == pytest.approx(1.0)
    assert two_sided_p(np.r_[-np.ones(100), np.ones(899)]) == pytest.approx(2 * 101 / 1000)


def test_ln2_is_reported_inside_an_interval_that_holds_it():
    surprisal = _rows("m", "t", LN2, 0.02, seed=7)
    table = units(fit_table(surprisal, n_boot=200), surprisal, 0.5)
    row = table.filter(pl.col("method") == "logodds").row(0, named=True)
    assert row["c_lo"] <= LN2 <= row["c_hi"] and row["ln2_inside"]
