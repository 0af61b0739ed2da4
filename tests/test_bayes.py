"""Tests for the two-hypothesis Bayesian learner fit in iclprobe.bayes."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from scipy.special import expit, logit

from iclprobe.bayes import (
    LN2,
    LearnerFit,
    bootstrap_c,
    compare_with_controls,
    fit_learner,
    fit_table,
    simulate_learner,
)

METHODS = ("prob_mse", "logodds")
C_VALUES = (LN2, 0.6, 0.9)
THETA0_VALUES = (0.05, 0.3)

# Six examples keep every simulated belief inside the 1e-6 logit clip (c = 0.9, theta0 = 0.3
# reaches logit ~10), so the log-odds fit sees the exact curve.
N_EXAMPLES = 6


def _noisy_curves(c: float, theta0: float, n_rep: int, n: int, sd: float, seed: int):
    """Replicates of the learner's curve with Gaussian noise added in log-odds."""
    rng = np.random.default_rng(seed)
    clean = logit(simulate_learner(c, theta0, n))
    return expit(clean + rng.normal(0.0, sd, size=(n_rep, n)))


def _long_frame(curves_by_task: dict[str, np.ndarray], model: str = "m") -> pl.DataFrame:
    """Long-format surprisal rows, shuffled so fit_table must sort them itself."""
    parts = []
    for task, p in curves_by_task.items():
        n_rep, n = p.shape
        parts.append(
            pl.DataFrame(
                {
                    "model": model,
                    "task": task,
                    "replicate": np.repeat(np.arange(n_rep), n),
                    "example": np.tile(np.arange(1, n + 1), n_rep),
                    "surprisal_nats": -np.log(p.ravel()),
                }
            )
        )
    return pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=1)


@pytest.mark.parametrize("c", (*C_VALUES, 0.3))
@pytest.mark.parametrize("theta0", THETA0_VALUES)
def test_simulate_matches_closed_form(c, theta0):
    beliefs = simulate_learner(c, theta0, 12)
    i = np.arange(12)
    expected = logit(theta0) + i * math.log(c / (1 - c))
    np.testing.assert_allclose(beliefs, expit(expected), rtol=0, atol=1e-12)
    # Once a belief is within ~1e-4 of 0 or 1, 1 - theta loses digits to rounding and its
    # logit cannot be accurate to 1e-12, so the log-odds check covers the moderate range.
    moderate = np.abs(expected) < 9.0
    assert moderate.sum() >= 4
    np.testing.assert_allclose(logit(beliefs[moderate]), expected[moderate], rtol=0, atol=1e-12)


def test_simulate_starts_at_prior_and_ln2_slope():
    beliefs = simulate_learner(LN2, 0.2, 3)
    assert beliefs[0] == 0.2
    # The headline number: c = ln 2 moves the log-odds by about 0.815 nats per example.
    assert np.diff(logit(beliefs)) == pytest.approx([0.8149, 0.8149], abs=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("c", C_VALUES)
@pytest.mark.parametrize("theta0", THETA0_VALUES)
def test_fit_recovers_noiseless_parameters(method, c, theta0):
    curve = simulate_learner(c, theta0, N_EXAMPLES)
    fit = fit_learner(np.tile(curve, (3, 1)), method)
    assert isinstance(fit, LearnerFit)
    assert fit.method == method
    assert fit.c == pytest.approx(c, abs=1e-4)
    assert fit.theta0 == pytest.approx(theta0, abs=1e-4)
    assert fit.loss == pytest.approx(0.0, abs=1e-10)
    assert fit.rmse == pytest.approx(math.sqrt(fit.loss))


@pytest.mark.parametrize("method", METHODS)
def test_fit_accepts_one_dimensional_curve(method):
    curve = simulate_learner(0.8, 0.1, N_EXAMPLES)
    assert fit_learner(curve, method) == fit_learner(curve[np.newaxis, :], method)


@pytest.mark.parametrize("method", METHODS)
def test_fit_allows_falling_belief(method):
    fit = fit_learner(simulate_learner(0.3, 0.7, N_EXAMPLES), method)
    assert fit.c == pytest.approx(0.3, abs=1e-4)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("level", (0.0, 1.0))
def test_fit_is_finite_when_lm_is_certain(method, level):
    p = np.full((3, 8), level)
    fit = fit_learner(p, method)
    assert all(math.isfinite(v) for v in (fit.c, fit.theta0, fit.loss, fit.rmse))
    lo, hi = bootstrap_c(p, method, n_boot=20)
    assert math.isfinite(lo) and math.isfinite(hi)


def test_prob_mse_fit_is_the_global_minimum_of_a_grid_search():
    """The local optimiser, started from the log-odds fit, lands on the global optimum.

    An independent brute-force search over (logit theta_0, log-odds slope) on a fine
    grid finds no lower loss, and its minimum lies next to the fitted parameters.
    """
    p = _noisy_curves(LN2, 0.2, 5, 10, 0.8, seed=3)
    fit = fit_learner(p, "prob_mse")
    a_grid = np.linspace(-4.0, 2.0, 601)  # (A,)
    b_grid = np.linspace(-1.0, 2.0, 601)  # (B,)
    steps = np.arange(p.shape[1])  # (N,)
    best = (np.inf, 0.0, 0.0)
    for a in a_grid:
        curves = expit(a + b_grid[:, None] * steps[None, :])  # (B, N)
        loss = ((curves[:, None, :] - p[None, :, :]) ** 2).mean(axis=(1, 2))  # (B,)
        k = int(np.argmin(loss))
        best = min(best, (float(loss[k]), a, b_grid[k]))
    grid_loss, a_best, b_best = best
    assert fit.loss <= grid_loss + 1e-12
    assert logit(fit.theta0) == pytest.approx(a_best, abs=0.02)
    assert logit(fit.c) == pytest.approx(b_best, abs=0.01)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("c", C_VALUES)
def test_bootstrap_interval_covers_true_c_with_noise(method, c):
    p = _noisy_curves(c, 0.2, n_rep=12, n=N_EXAMPLES, sd=0.2, seed=7)
    lo, hi = bootstrap_c(p, method, n_boot=200, seed=0)
    point = fit_learner(p, method).c
    assert lo <= c <= hi
    assert lo <= point <= hi
    assert lo < hi


def test_bootstrap_resamples_replicates_with_the_seeded_generator():
    """The interval equals a bootstrap written out by hand; another seed moves it."""
    p = _noisy_curves(0.7, 0.2, 6, N_EXAMPLES, 0.3, seed=2)
    rows = np.random.default_rng(4).integers(0, 6, size=(50, 6))
    cs = [fit_learner(p[idx], "logodds").c for idx in rows]
    expected = tuple(np.quantile(cs, [0.025, 0.975]))
    assert bootstrap_c(p, "logodds", n_boot=50, seed=4) == pytest.approx(expected, abs=1e-12)
    assert bootstrap_c(p, "logodds", n_boot=50, seed=5) != pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_bootstrap_with_one_replicate_is_nan(method):
    lo, hi = bootstrap_c(simulate_learner(LN2, 0.2, N_EXAMPLES), method)
    assert math.isnan(lo) and math.isnan(hi)


def test_fit_table_shape_columns_and_recovery():
    c_true = {"copy": LN2, "reverse": 0.8}
    curves = {
        task: _noisy_curves(c, 0.2, n_rep=4, n=10, sd=0.05, seed=k)
        for k, (task, c) in enumerate(c_true.items())
    }
    table = fit_table(_long_frame(curves), n_boot=50)

    assert table.columns == [
        "model",
        "task",
        "method",
        "c",
        "theta0",
        "loss",
        "rmse",
        "loss_units",
        "rmse_units",
        "c_lo",
        "c_hi",
        "ln2_inside",
        "c_minus_ln2",
        "c_excludes_half",
        "r2_vs_flat",
        "clipped_fraction",
        "at_limit",
        "informative",
        "fit_note",
        "log_odds_slope",
        "n_replicates",
        "n_examples",
        "interval_level",
        "n_boot",
    ]
    assert table.height == 4
    assert table.select("task", "method").rows() == [
        ("copy", "logodds"),
        ("copy", "prob_mse"),
        ("reverse", "logodds"),
        ("reverse", "prob_mse"),
    ]
    for row in table.iter_rows(named=True):
        assert row["c"] == pytest.approx(c_true[row["task"]], abs=0.02)
        assert row["c_lo"] <= row["c"] <= row["c_hi"]
        assert row["ln2_inside"] == (row["c_lo"] <= LN2 <= row["c_hi"])
        assert row["c_minus_ln2"] == pytest.approx(row["c"] - LN2)
        assert row["log_odds_slope"] == pytest.approx(math.log(row["c"] / (1 - row["c"])))
        assert (row["n_replicates"], row["n_examples"]) == (4, 10)
        assert (row["interval_level"], row["n_boot"]) == (0.95, 50)
    copy = table.filter(pl.col("task") == "copy")
    assert copy["ln2_inside"].all()
    assert not table.filter(pl.col("task") == "reverse")["ln2_inside"].any()


def test_fit_table_matches_fit_learner_on_pivoted_array():
    p = _noisy_curves(0.75, 0.1, n_rep=4, n=10, sd=0.1, seed=5)
    table = fit_table(_long_frame({"t": p}), methods=("prob_mse",), n_boot=10)
    assert table["c"].item() == pytest.approx(fit_learner(p, "prob_mse").c, abs=1e-9)


def test_fit_table_single_replicate_has_no_interval_and_no_verdict_on_ln2():
    p = simulate_learner(LN2, 0.2, 10)[np.newaxis, :]
    table = fit_table(_long_frame({"t": p}), n_boot=10)
    for column in ("c_lo", "c_hi", "ln2_inside", "c_excludes_half"):
        assert table[column].is_null().all(), column
    assert not table["informative"].any()
    assert table["fit_note"].str.contains("no interval on c \\(1 replicate\\)").all()


def test_fit_table_rejects_incomplete_grid():
    frame = _long_frame({"t": _noisy_curves(0.7, 0.2, 3, 10, 0.1, seed=0)})
    holey = frame.filter(~((pl.col("replicate") == 1) & (pl.col("example") == 4)))
    with pytest.raises(ValueError, match="exactly once"):
        fit_table(holey, n_boot=10)


@pytest.mark.parametrize("bad", (0.0, 1.0, 1.5, -0.2))
def test_bad_c_raises_naming_value(bad):
    with pytest.raises(ValueError, match=rf"c .*{bad!r}"):
        simulate_learner(bad, 0.5, 5)


def test_bad_theta0_raises_naming_value():
    with pytest.raises(ValueError, match=r"theta0 .*1\.2"):
        simulate_learner(0.6, 1.2, 5)


def test_bad_method_raises_naming_value_and_valid_methods():
    p = simulate_learner(0.6, 0.2, 5)
    for call in (
        lambda: fit_learner(p, "nonsense"),
        lambda: bootstrap_c(p, "nonsense"),
        lambda: fit_table(_long_frame({"t": p[np.newaxis, :]}), methods=("nonsense",)),
    ):
        with pytest.raises(ValueError, match="'nonsense'.*prob_mse.*logodds"):
            call()


def test_fit_rejects_out_of_range_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fit_learner(np.array([0.2, 1.3, 0.5]))


# ----------------------------------------------------------- does a fit mean anything?

N_LONG = 30


def _fits(p: np.ndarray) -> dict[str, dict]:
    table = fit_table(_long_frame({"t": p}), n_boot=100)
    return {row["method"]: row for row in table.iter_rows(named=True)}


def test_clean_synthetic_learner_is_informative():
    p = _noisy_curves(0.7, 0.05, n_rep=10, n=N_LONG, sd=0.3, seed=0)
    for method, row in _fits(p).items():
        assert row["informative"] is True, (method, row["fit_note"])
        assert row["fit_note"] == ""
        assert row["c_excludes_half"] is True and row["r2_vs_flat"] > 0.9
        assert not row["at_limit"]
    # The curve saturates: about a third of the points lie within the clip of 1.
    assert 0.2 < row["clipped_fraction"] < 0.5


def test_flat_curve_is_not_informative():
    p = _noisy_curves(0.5, 0.3, n_rep=10, n=N_LONG, sd=0.3, seed=0)
    for method, row in _fits(p).items():
        assert row["informative"] is False, method
        assert row["c_excludes_half"] is False
        assert row["r2_vs_flat"] < 0.1
        assert "includes 0.5" in row["fit_note"] and "flat line" in row["fit_note"]


def test_exactly_flat_curve_has_no_variance_to_explain():
    row = _fits(np.full((4, 10), 0.3))["prob_mse"]
    assert row["r2_vs_flat"] is None and "the curve is flat" in row["fit_note"]


def test_curve_at_the_clipping_value_is_not_informative():
    """A random model: P(A) ~ 5e-10 and falling a little; the fits look precise but are not."""
    rng = np.random.default_rng(0)
    p = 5e-10 * np.exp(rng.normal(0.0, 0.2, (10, N_LONG)) - 0.01 * np.arange(N_LONG))
    fits = _fits(p)
    for method, row in fits.items():
        assert row["informative"] is False, method
        assert row["clipped_fraction"] == 1.0
        assert "(clipped) at 100% of points" in row["fit_note"]
    # Log-odds: every point is the clip constant, so c = 0.5 and theta0 = the clip exactly.
    logodds = fits["logodds"]
    assert logodds["c"] == pytest.approx(0.5) and logodds["theta0"] == pytest.approx(1e-6)
    assert logodds["at_limit"] and "theta0 within 1e-06 of 0 or 1" in logodds["fit_note"]


def test_parameter_at_the_bound_is_flagged():
    """An LM certain from the first example: prob_mse pushes theta0 to its bound."""
    row = _fits(np.full((3, 8), 1.0))["prob_mse"]
    assert row["at_limit"] is True and not row["informative"]
    assert "bound" in row["fit_note"] or "clipping value" in row["fit_note"]


def test_loss_units_name_each_method_space():
    fits = _fits(_noisy_curves(0.7, 0.2, n_rep=4, n=10, sd=0.1, seed=1))
    assert (fits["prob_mse"]["loss_units"], fits["prob_mse"]["rmse_units"]) == (
        "probability^2",
        "probability",
    )
    assert (fits["logodds"]["loss_units"], fits["logodds"]["rmse_units"]) == (
        "log-odds nats^2",
        "log-odds nats",
    )


def test_fits_are_compared_with_their_shuffled_control():
    learner = _noisy_curves(0.8, 0.1, n_rep=8, n=12, sd=0.3, seed=0)
    curves = {
        "rule": learner,
        "rule_shuffled": _noisy_curves(0.5, 0.1, n_rep=8, n=12, sd=0.3, seed=1),
        "same": learner,
        "same_shuffled": _noisy_curves(0.8, 0.1, n_rep=8, n=12, sd=0.3, seed=2),
        "alone": learner,
    }
    fits = fit_table(_long_frame(curves), n_boot=100)
    controls = {"rule": "rule_shuffled", "same": "same_shuffled"}
    table = compare_with_controls(fits, controls)
    assert table.height == fits.height
    rows = {(r["task"], r["method"]): r for r in table.iter_rows(named=True)}
    for method in METHODS:
        rule, shuffled = rows["rule", method], rows["rule_shuffled", method]
        assert rule["control_task"] == "rule_shuffled"
        assert (rule["control_c"], rule["control_c_lo"]) == (shuffled["c"], shuffled["c_lo"])
        assert rule["c_differs_from_control"] is True
        assert rows["same", method]["c_differs_from_control"] is False
        for task in ("alone", "rule_shuffled"):
            assert rows[task, method]["control_task"] is None
            assert rows[task, method]["c_differs_from_control"] is None


def test_report_summary_shows_whether_each_fit_means_anything():
    from iclprobe.summaries import bayes_summary

    curves = {
        "rule": _noisy_curves(0.8, 0.1, n_rep=8, n=12, sd=0.3, seed=0),
        "rule_shuffled": _noisy_curves(0.5, 0.1, n_rep=8, n=12, sd=0.3, seed=1),
    }
    fits = compare_with_controls(
        fit_table(_long_frame(curves), n_boot=50), {"rule": "rule_shuffled"}
    )
    summary = bayes_summary(fits)
    assert {"informative", "fit_note", "control_c", "c_differs_from_control"} <= set(
        summary.columns
    )
    shuffled = summary.filter(pl.col("task") == "rule_shuffled")
    assert not shuffled["informative"].any() and shuffled["fit_note"].str.len_chars().min() > 0
