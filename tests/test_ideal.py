"""The ideal learner against brute-force Bayes over every hypothesis of small families."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import numpy as np
import polars as pl
import pytest

from conftest import make_task
from iclprobe import ideal
from iclprobe.ideal import AffineFamily, beside_model, ideal_learner, information_summary
from iclprobe.prompts import make_prompts

SMALL = AffineFamily(slopes=(-2, 3), intercepts=(-4, 6))  # 6 x 11 = 66 rules


def brute_force(prompts, task, family, none_prior, include_task_rule=True) -> np.ndarray:
    """−log₂ P_i(y_i) per (replicate, example) by Bayes' rule over every hypothesis, exact.

    Written independently of iclprobe.ideal: every rule is a Python function, the posterior
    is recomputed from the prior and all earlier examples with exact fractions, and the
    predictive sums the posterior of the rules that give y_i plus "none of these"'s share.
    """
    (a_lo, a_hi), (b_lo, b_hi) = family.slopes, family.intercepts
    rules = [
        (lambda x, a=a, b=b: a * x + b)
        for a in range(a_lo, a_hi + 1)
        for b in range(b_lo, b_hi + 1)
    ]
    own = task.fn
    domain = list(task.xs)
    if include_task_rule and not any(all(r(x) == own(x) for x in domain) for r in rules):
        rules.append(own)
    eps = Fraction(none_prior)
    n_answers = len(task.candidates())
    out = []
    for _, rows in prompts.sort("replicate", "example").group_by("replicate", maintain_order=True):
        xs, ys = rows["x"].to_list(), rows["y"].to_list()
        for i in range(len(xs)):
            joint = [
                (1 - eps) / len(rules) * all(r(xs[j]) == ys[j] for j in range(i)) for r in rules
            ]
            none = eps * Fraction(1, n_answers) ** i
            total = sum(joint) + none
            p = (
                sum(w for w, r in zip(joint, rules, strict=True) if r(xs[i]) == ys[i])
                + none / n_answers
            ) / total
            out.append(-math.log2(p))
    return np.array(out)


def _run(task, family=SMALL, none_prior=0.01, include_task_rule=True) -> pl.DataFrame:
    return ideal_learner(make_prompts(task), task, family, none_prior, include_task_rule)


def _task(**overrides):
    spec = {"function": "2*x + 3", "x_low": 0, "x_high": 12, "n_examples": 8, "replicates": 3}
    return make_task(**{**spec, **overrides})


@pytest.mark.parametrize(
    "overrides, added",
    [
        ({"function": "2*x + 3"}, False),  # a rule of the family
        ({"function": "x // 3"}, True),  # not affine: the task's own rule is added
        ({"function": "x + 40"}, True),  # affine, but its intercept is off the grid
        ({"function": "-x", "x_low": -6, "x_high": 6}, False),  # negative x and answers
    ],
)
def test_matches_brute_force_enumeration(overrides, added):
    task = _task(**overrides)
    table = _run(task)
    expected = brute_force(make_prompts(task), task, SMALL, 0.01)
    np.testing.assert_allclose(
        table["ideal_surprisal_bits"].to_numpy(), expected, rtol=1e-9, atol=1e-12
    )
    assert table["task_rule_added"].unique().to_list() == [added]
    assert table["family_size"][0] == SMALL.size + added


def test_a_rule_outside_the_family_is_never_learned_without_it():
    """Without the task's rule in H, x // 3 is paid at the rate of "none of these"."""
    task = _task(function="x // 3")
    table = _run(task, include_task_rule=False)
    expected = brute_force(make_prompts(task), task, SMALL, 0.01, include_task_rule=False)
    np.testing.assert_allclose(
        table["ideal_surprisal_bits"].to_numpy(), expected, rtol=1e-9, atol=1e-12
    )
    assert not table["task_rule_added"].any()
    with_rule = _run(task)
    assert with_rule["ideal_cumulative_bits"].max() < table["ideal_cumulative_bits"].max()


def test_shuffled_control_falls_back_to_the_uniform_code():
    task = _task(function="2*x + 3", control="shuffled", x_high=30, n_examples=12)
    table = _run(task)
    expected = brute_force(make_prompts(task), task, SMALL, 0.01)
    np.testing.assert_allclose(
        table["ideal_surprisal_bits"].to_numpy(), expected, rtol=1e-9, atol=1e-12
    )
    # Once no rule is consistent, every answer costs exactly log2 |Y| and "none" holds it all.
    dead = table.filter(pl.col("rules_consistent_before") == 0)
    assert dead.height > 0
    uniform = math.log2(len(task.candidates()))
    np.testing.assert_allclose(dead["ideal_surprisal_bits"].to_numpy(), uniform, rtol=1e-12)
    np.testing.assert_allclose(dead["none_posterior"].to_numpy(), 1.0, rtol=1e-12)


def test_information_of_a_known_rule_is_about_log2_of_the_family():
    """I_N = −log₂((1 − ε)/|H| + ε|Y|^−N) once only the task's rule is left."""
    family = AffineFamily(slopes=(-10, 10), intercepts=(-100, 100))
    task = _task(function="x", x_high=99, n_examples=30)
    table = _run(task, family=family)
    last = table.filter(pl.col("example") == 30)
    assert (last["rules_consistent_before"] == 1).all()
    n_answers = len(task.candidates())
    expected = -math.log2((1 - 0.01) / family.size + 0.01 * n_answers**-30.0)
    np.testing.assert_allclose(
        last["ideal_cumulative_bits"].to_numpy(), expected, rtol=1e-9, atol=1e-12
    )
    assert expected == pytest.approx(math.log2(family.size), abs=0.02)


def test_consistent_counts_match_counting_every_rule():
    rng = np.random.default_rng(3)
    xs = rng.integers(-20, 20, size=(4, 6))
    ys = np.where(rng.random((4, 6)) < 0.7, 2 * xs - 1, rng.integers(-50, 50, size=(4, 6)))
    counts = SMALL.consistent_counts(xs, ys)
    (a_lo, a_hi), (b_lo, b_hi) = SMALL.slopes, SMALL.intercepts
    for r in range(4):
        for k in range(7):
            by_hand = sum(
                all(a * xs[r, j] + b == ys[r, j] for j in range(k))
                for a in range(a_lo, a_hi + 1)
                for b in range(b_lo, b_hi + 1)
            )
            assert counts[r, k] == by_hand


def test_chunks_of_slopes_give_the_same_counts(monkeypatch):
    """Slopes are checked in chunks to bound memory; one slope per chunk changes nothing."""
    rng = np.random.default_rng(5)
    xs = rng.integers(0, 30, size=(3, 5))
    ys = np.where(rng.random((3, 5)) < 0.8, -xs + 2, 7)
    whole = SMALL.consistent_counts(xs, ys)
    monkeypatch.setattr(ideal, "CHUNK_CELLS", xs.size)
    assert SMALL.consistent_counts(xs, ys).tolist() == whole.tolist()


def test_contains_checks_the_whole_domain():
    xs = np.arange(0, 20)
    assert SMALL.contains(xs, 2 * xs + 3)
    assert not SMALL.contains(xs, xs // 3)
    assert not SMALL.contains(xs, 7 * xs)  # slope off the grid
    assert not SMALL.contains(xs, (3 * xs) // 2)  # fractional slope
    with pytest.raises(ValueError, match="two distinct x"):
        SMALL.contains(np.array([4, 4]), np.array([1, 1]))


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_none_prior_must_be_a_probability(bad):
    with pytest.raises(
        ValueError, match=f"none_prior must lie strictly between 0 and 1, got {bad}"
    ):
        _run(_task(), none_prior=bad)


def _surprisal_for(table: pl.DataFrame, model: str, bits: float) -> pl.DataFrame:
    n = table.height
    return table.select("task", "replicate", "example", "x", "y", "control").with_columns(
        model=pl.lit(model),
        surprisal_bits=pl.lit(bits),
        cumulative_bits=pl.lit(bits) * pl.col("example"),
        uniform_bits=pl.lit(5.0),
        uniform_cumulative_bits=pl.lit(5.0) * pl.col("example"),
        p_correct=pl.Series([2.0**-bits] * n),
    )


def test_beside_model_gives_the_excess_and_refuses_other_prompts():
    ideal = _run(_task())
    model = _surprisal_for(ideal, "m", 3.0)
    both = beside_model(model, ideal)
    np.testing.assert_allclose(
        both["excess_cumulative_bits"].to_numpy(),
        both["cumulative_bits"].to_numpy() - both["ideal_cumulative_bits"].to_numpy(),
    )
    summary = information_summary(both)
    row = summary.row(0, named=True)
    last = both.filter(pl.col("example") == 8)
    assert row["model_bits"] == pytest.approx(24.0)
    assert row["ideal_bits"] == pytest.approx(last["ideal_cumulative_bits"].mean())
    assert row["excess_bits"] == pytest.approx(24.0 - row["ideal_bits"])
    assert row["uniform_bits"] == pytest.approx(40.0)
    other = model.with_columns(y=pl.col("y") + (pl.col("example") == 4).cast(pl.Int64))
    with pytest.raises(ValueError, match="did not see the model's prompt.*example 4"):
        beside_model(other, ideal)


def test_the_ideal_learner_does_not_load_torch():
    code = "import sys, iclprobe.ideal, iclprobe.constancy, iclprobe.answers; "
    code += "print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
