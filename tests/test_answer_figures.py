"""The figures of issue 14: the ideal learner on the learning curves, is c a constant, and
the information the model needed against the ideal learner's."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from test_plots import N_EXAMPLES, _assert_png, _legend_texts, _surprisal_rows

from iclprobe.bayes import fit_table, simulate_learner
from iclprobe.constancy import pairwise_tests, units
from iclprobe.plots import constancy as constancy_plots
from iclprobe.plots import learning
from iclprobe.plots.ideal import build_ideal_information, ideal_information


@pytest.fixture(autouse=True)
def no_leaked_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open"


def _ideal_for(surprisal: pl.DataFrame, family_size: int = 66) -> pl.DataFrame:
    """An ideal learner's table on the same rows: certain after the second example."""
    bits = pl.when(pl.col("example") == 1).then(6.0).when(pl.col("example") == 2).then(2.0)
    return (
        surprisal.select("task", "replicate", "example", "x", "y")
        .with_columns(
            ideal_surprisal_bits=bits.otherwise(0.01),
            family_size=pl.lit(family_size),
        )
        .with_columns(
            ideal_p_correct=(2 ** -pl.col("ideal_surprisal_bits")),
            ideal_cumulative_bits=pl.col("ideal_surprisal_bits").cum_sum().over("replicate"),
        )
    )


@pytest.fixture(scope="module")
def tables():
    surprisal = pl.concat(
        [
            _surprisal_rows("tiny-a", "fast", 0.8, 0.05, n_rep=6, seed=1),
            _surprisal_rows("tiny-a", "slow", 0.65, 0.05, n_rep=6, seed=2),
            _surprisal_rows("tiny-a", "flat", 0.5, 0.02, n_rep=6, seed=3),
        ]
    )
    bayes = fit_table(surprisal, n_boot=50)
    unit_table = units(bayes, surprisal, 0.5)
    return (
        surprisal,
        bayes,
        unit_table,
        pairwise_tests(unit_table, surprisal, n_boot=100, seed=0, alpha=0.05, level=0.95),
    )


def test_learning_curves_show_the_ideal_learner_beside_the_model_and_the_fit(tables):
    surprisal, bayes, _, _ = tables
    fast = surprisal.filter(pl.col("task") == "fast")
    ideal = _ideal_for(fast)
    fig = learning.build_lm_surprisal(fast, bayes, ideal=ideal)
    ax = fig.axes[0]
    texts = _legend_texts(ax)
    assert any(t.startswith("ideal learner (66 rules + “none of these”): mean of 6") for t in texts)
    assert any(t.startswith("fitted learner") for t in texts)
    assert any(t.startswith("uniform code") for t in texts)
    line = next(ln for ln in ax.get_lines() if ln.get_label().startswith("ideal learner"))
    np.testing.assert_allclose(line.get_ydata(), [6.0, 2.0] + [0.01] * (N_EXAMPLES - 2))
    plt.close(fig)


def test_cumulative_information_adds_the_fitted_and_the_ideal_learner(tables):
    surprisal, bayes, _, _ = tables
    fast = surprisal.filter(pl.col("task") == "fast")
    fig = learning.build_cumulative_information(fast, ideal=_ideal_for(fast), bayes=bayes)
    ax = fig.axes[0]
    lines = {ln.get_label().split(":")[0]: ln for ln in ax.get_lines()}
    row = bayes.filter(pl.col("task") == "fast", pl.col("method") == "prob_mse").row(0, named=True)
    theta = simulate_learner(row["c"], row["theta0"], N_EXAMPLES)
    fitted = lines["fitted learner (prob_mse)"].get_ydata()
    np.testing.assert_allclose(fitted, np.r_[0.0, np.cumsum(-np.log2(theta))])
    ideal = lines["ideal learner (66 rules + “none of these”)"].get_ydata()
    assert ideal[-1] == pytest.approx(8.0 + 0.01 * (N_EXAMPLES - 2))
    plt.close(fig)


def test_task_figures_take_the_ideal_learner(tmp_path, tables):
    surprisal, bayes, _, _ = tables
    fast = surprisal.filter(pl.col("task") == "fast")
    for path in learning.task_figures(fast, bayes, tmp_path, ideal=_ideal_for(fast)):
        _assert_png(path)


def test_c_constancy_shows_the_counted_tasks_and_the_test(tmp_path, tables):
    _, _, unit_table, pairs = tables
    fig = constancy_plots.build_c_constancy(unit_table, pairs)
    left, right = fig.axes[0], fig.axes[1]
    assert "method: prob_mse" in left.get_title()
    assert "2 learned:" in left.get_title()
    assert [t.get_text() for t in left.get_xticklabels()] == ["slow", "fast"]  # sorted by c
    assert any("c = ln 2" in t for t in _legend_texts(left))
    notes = [t.get_text() for t in left.texts]
    assert any("Not counted: flat (not learned: mean P(A)" in n for n in notes)
    cells = [t.get_text() for t in right.texts]
    assert len(cells) == 1 and cells[0].startswith("+") and "p = " in cells[0]  # fast − slow
    assert "Holm-adjusted" in right.get_title()
    assert "Is c a constant?" in fig._suptitle.get_text()
    plt.close(fig)
    _assert_png(constancy_plots.c_constancy(unit_table, pairs, tmp_path / "c.png"))


def test_c_constancy_with_fewer_than_two_learned_tasks(tables):
    _, _, unit_table, pairs = tables
    one = unit_table.filter(pl.col("task") != "slow")
    fig = constancy_plots.build_c_constancy(one, pairs.clear())
    assert any("nothing to test" in t.get_text() for t in fig.axes[1].texts)
    assert "1 learned task: no comparison" in fig.axes[0].get_title()
    plt.close(fig)


def test_ideal_information_compares_the_model_with_the_ideal_learner(tmp_path, tables):
    surprisal, _, _, _ = tables
    ideal = pl.concat(
        [_ideal_for(surprisal.filter(pl.col("task") == t)) for t in ("fast", "slow", "flat")]
    )
    table = surprisal.join(ideal, on=["task", "replicate", "example", "x", "y"]).with_columns(
        excess_cumulative_bits=pl.col("cumulative_bits") - pl.col("ideal_cumulative_bits"),
        family=pl.lit("a·x + b, a in -2…3, b in -4…6"),
        task_rule_added=pl.lit(False),
        task_function=pl.lit("x"),
        none_prior=pl.lit(0.01),
    )
    fig = build_ideal_information(table)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["fast", "flat", "slow"]
    assert "I_N" in ax.get_xlabel() and "(bits)" in ax.get_xlabel()
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert set(labels) == {
        "model: I_N, mean of replicates",
        "ideal learner: I_N, mean of replicates",
        "uniform code N·log₂|Y| (learns nothing)",
    }
    assert "66 rules" in fig._suptitle.get_text()
    model_points = ax.containers[0].lines[0].get_xdata()
    last = (
        table.filter(pl.col("example") == N_EXAMPLES)
        .group_by("task")
        .agg(pl.col("cumulative_bits").mean())
    )
    expected = dict(last.iter_rows())
    np.testing.assert_allclose(model_points, [expected[t] for t in ("fast", "flat", "slow")])
    plt.close(fig)
    _assert_png(ideal_information(table, tmp_path / "ideal.png"))
