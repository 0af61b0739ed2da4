"""Tests for the figures in iclprobe.plots, on synthetic surprisal and fit tables."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
from scipy.special import expit, logit

from iclprobe.bayes import LN2, fit_table, simulate_learner
from iclprobe.plots import learning as plots

N_EXAMPLES = 8
N_CANDIDATES = 51
TRUTH = {  # (model, task) -> (c, theta0)
    ("tiny-a", "linear"): (LN2, 0.05),
    ("tiny-a", "identity"): (0.85, 0.2),
    ("tiny-b", "linear"): (0.6, 0.1),
    ("tiny-b", "identity"): (0.75, 0.3),
}


def _surprisal_rows(
    model: str, task: str, c: float, theta0: float, n_rep: int, seed: int, control=None
) -> pl.DataFrame:
    """Per-replicate surprisal rows whose P(A) is the learner's curve plus log-odds noise."""
    rng = np.random.default_rng(seed)
    clean = logit(simulate_learner(c, theta0, N_EXAMPLES))
    p = expit(clean + rng.normal(0.0, 0.3, size=(n_rep, N_EXAMPLES)))
    nats = -np.log(p)
    bits = nats / math.log(2)
    replicate, example = np.divmod(np.arange(n_rep * N_EXAMPLES), N_EXAMPLES)
    x = rng.integers(0, 50, size=n_rep * N_EXAMPLES)
    uniform = math.log2(N_CANDIDATES)
    return pl.DataFrame(
        {
            "model": model,
            "task": task,
            "replicate": replicate,
            "example": example + 1,
            "x": x,
            "y": 2 * x + 3,
            "surprisal_nats": nats.ravel(),
            "surprisal_bits": bits.ravel(),
            "cumulative_bits": np.cumsum(bits, axis=1).ravel(),
            "p_correct": p.ravel(),
            "uniform_bits": uniform,
            "uniform_cumulative_bits": uniform * (example + 1),
            "control": pl.Series([control] * (n_rep * N_EXAMPLES), dtype=pl.String),
        }
    )


@pytest.fixture(scope="module")
def surprisal_all() -> pl.DataFrame:
    parts = [
        _surprisal_rows(model, task, c, theta0, n_rep=3, seed=i)
        for i, ((model, task), (c, theta0)) in enumerate(TRUTH.items())
    ]
    return pl.concat(parts)


@pytest.fixture(scope="module")
def bayes_all(surprisal_all) -> pl.DataFrame:
    return fit_table(surprisal_all, n_boot=20)


@pytest.fixture()
def one_task(surprisal_all, bayes_all):
    """(surprisal, bayes, control) for tiny-a / linear; the control has no rule (c = 0.5)."""
    keep = (pl.col("model") == "tiny-a") & (pl.col("task") == "linear")
    control = _surprisal_rows("tiny-a", "linear-shuffled", 0.5, 0.05, 3, 99, "shuffled")
    return surprisal_all.filter(keep), bayes_all.filter(keep), control


@pytest.fixture(autouse=True)
def no_leaked_figures():
    plt.close("all")
    yield
    assert plt.get_fignums() == [], "a figure was left open"


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend() or ax.figure.legends[0]
    return [t.get_text() for t in legend.get_texts()]


def _assert_png(path) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000


def _assert_no_temp_files(folder) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp.png")]


def test_task_figures_writes_five_pngs(tmp_path, one_task):
    surprisal, bayes, control = one_task
    out = tmp_path / "figures" / "tiny-a" / "linear"
    paths = plots.task_figures(surprisal, bayes, out, control=control, function="y = 2x + 3")
    assert [p.name for p in paths] == list(plots.TASK_FIGURES)
    for path in paths:
        _assert_png(path)
    _assert_no_temp_files(out)


def test_task_figures_without_control_and_other_method(tmp_path, surprisal_all, bayes_all):
    surprisal = surprisal_all.filter((pl.col("model") == "tiny-b") & (pl.col("task") == "identity"))
    # The full bayes table is accepted; the task's own rows are picked out.
    paths = plots.task_figures(surprisal, bayes_all, tmp_path, method="logodds")
    for path in paths:
        _assert_png(path)
    _assert_no_temp_files(tmp_path)


def test_lm_surprisal_figure_content(one_task):
    surprisal, bayes, control = one_task
    fig = plots.build_lm_surprisal(surprisal, bayes, control=control, function="y = 2x + 3")
    ax = fig.axes[0]
    title = ax.get_title()
    assert "surprisal" in title and "tiny-a" in title and "linear" in title
    assert "y = 2x + 3" in title
    assert ax.get_xlabel() == "example i (1-based)"
    assert "(bits)" in ax.get_ylabel()
    texts = _legend_texts(ax)
    assert any(t.startswith("LM: mean of 3 replicates") and "95%" in t for t in texts)
    fit = bayes.filter(pl.col("method") == "prob_mse").row(0, named=True)
    assert any("fitted learner (prob_mse)" in t and f"c = {fit['c']:.3f}" in t for t in texts)
    assert any("shuffled control" in t for t in texts)
    assert any("uniform code" in t and f"{math.log2(N_CANDIDATES):.2f} bits" in t for t in texts)
    # The fitted learner's dashed line is its surprisal -log2 theta_{i-1}.
    dashed = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 1
    expected = -np.log2(simulate_learner(fit["c"], fit["theta0"], N_EXAMPLES))
    np.testing.assert_allclose(dashed[0].get_ydata(), expected)
    plt.close(fig)


def test_lm_prior_figure_content(one_task):
    surprisal, bayes, control = one_task
    fig = plots.build_lm_prior(surprisal, bayes, control=control, method="logodds")
    ax = fig.axes[0]
    assert "P(A)" in ax.get_title() and "tiny-a" in ax.get_title()
    assert "probability" in ax.get_ylabel()
    assert ax.get_ylim() == pytest.approx((-0.02, 1.02))
    fit = bayes.filter(pl.col("method") == "logodds").row(0, named=True)
    texts = _legend_texts(ax)
    label = next(t for t in texts if t.startswith("fitted learner (logodds)"))
    assert f"[{fit['c_lo']:.3f}, {fit['c_hi']:.3f}]" in label
    assert f"θ₀ = {fit['theta0']:.3g}" in label
    assert not any("uniform code" in t for t in texts)
    assert any("shuffled control" in t for t in texts)
    plt.close(fig)


@pytest.mark.parametrize("build", [plots.build_simulated_surprisal, plots.build_simulated_prior])
def test_simulated_figures_show_fit_and_ln2(build, one_task):
    _, bayes, _ = one_task
    fig = build(bayes, function="y = 2x + 3")
    ax = fig.axes[0]
    assert "Simulated" in ax.get_title() and "tiny-a" in ax.get_title()
    assert ax.get_xlabel() == "example i (1-based)"
    texts = _legend_texts(ax)
    assert len(texts) == 2
    assert texts[0].startswith("fitted learner (prob_mse)")
    assert texts[1].startswith("reference learner: c = ln 2")
    for line in ax.get_lines():
        assert len(line.get_xdata()) == N_EXAMPLES
    plt.close(fig)


def test_cumulative_information_content(one_task):
    surprisal, _, control = one_task
    fig = plots.build_cumulative_information(surprisal, control=control)
    ax = fig.axes[0]
    assert "information to learn the task" in ax.get_title().lower()
    assert ax.get_ylabel() == r"cumulative surprisal $I_k$ (bits)"
    texts = _legend_texts(ax)
    assert any("uniform code k·log₂|Y|" in t for t in texts)
    assert any("shuffled control" in t for t in texts)
    # The uniform line reaches N * log2 |Y| at k = N.
    uniform = next(ln for ln in ax.get_lines() if ln.get_linestyle() == ":")
    assert uniform.get_ydata()[-1] == pytest.approx(N_EXAMPLES * math.log2(N_CANDIDATES))
    plt.close(fig)


def _errorbar_segments(ax) -> int:
    return sum(len(container.lines[2][0].get_segments()) for container in ax.containers)


def test_c_by_model_and_task(tmp_path, bayes_all):
    fig = plots.build_c_by_model_and_task(bayes_all)
    panels = fig.axes
    assert [ax.get_title() for ax in panels] == ["method: prob_mse", "method: logodds"]
    assert panels[0].get_ylabel() == "fitted sensitivity c (probability)"
    assert "by model and task" in fig._suptitle.get_text()
    assert set(_legend_texts(panels[0])) == {"tiny-a", "tiny-b", "c = ln 2 (seed)"}
    # Every (model, task) in each panel has an interval here.
    assert [_errorbar_segments(ax) for ax in panels] == [4, 4]
    plt.close(fig)
    path = plots.c_by_model_and_task(bayes_all, tmp_path / "c-by-model-and-task.png")
    _assert_png(path)
    _assert_no_temp_files(tmp_path)


def test_c_by_model_and_task_with_nan_intervals(tmp_path, bayes_all):
    """A single-replicate fit has no interval: its point is drawn without a bar."""
    single = fit_table(_surprisal_rows("tiny-c", "linear", 0.7, 0.1, 1, 7), n_boot=20)
    assert single["c_lo"].is_null().all()
    table = pl.concat([bayes_all, single])
    fig = plots.build_c_by_model_and_task(table)
    panels = fig.axes
    assert [_errorbar_segments(ax) for ax in panels] == [4, 4]
    # Four fits with intervals and tiny-c's, hollow: without an interval it is not informative.
    points = [ln for ln in panels[0].get_lines() if ln.get_marker() == "o"]
    assert sum(len(ln.get_xdata()) for ln in points) == 5
    hollow = [ln for ln in points if ln.get_markerfacecolor() == "white" and len(ln.get_xdata())]
    assert len(hollow) == 1 and hollow[0].get_xdata()[0] == pytest.approx(1.0, abs=0.3)
    assert "no interval" in fig._suptitle.get_text()
    plt.close(fig)
    _assert_png(plots.c_by_model_and_task(table, tmp_path / "c.png"))


def test_single_replicate_fit_label(tmp_path):
    surprisal = _surprisal_rows("tiny-c", "linear", 0.7, 0.1, 1, 7)
    bayes = fit_table(surprisal, n_boot=20)
    fig = plots.build_lm_prior(surprisal, bayes)
    assert any("no interval" in t for t in _legend_texts(fig.axes[0]))
    plt.close(fig)
    for path in plots.task_figures(surprisal, bayes, tmp_path):
        _assert_png(path)


def test_failed_save_leaves_no_temp_file_or_figure(tmp_path, one_task):
    surprisal, bayes, _ = one_task
    blocker = tmp_path / "lm-surprisal.png"
    blocker.mkdir()  # os.replace cannot overwrite a folder with a file
    with pytest.raises(OSError):
        plots.lm_surprisal(surprisal, bayes, blocker)
    _assert_no_temp_files(tmp_path)


def test_rejects_mismatched_or_missing_fit(one_task, bayes_all):
    surprisal, _, _ = one_task
    other = bayes_all.filter(pl.col("model") == "tiny-b")
    with pytest.raises(ValueError, match="expected one 'prob_mse' fit"):
        plots.build_lm_surprisal(surprisal, other)
    with pytest.raises(ValueError, match="unknown method"):
        plots.build_lm_surprisal(surprisal, bayes_all, method="bogus")
    with pytest.raises(ValueError, match="expected one model"):
        two_models = pl.concat([surprisal, surprisal.with_columns(model=pl.lit("x"))])
        plots.build_cumulative_information(two_models)


def test_failed_build_closes_its_figure(one_task):
    """A non-constant uniform code fails after the axes exist; the figure is closed."""
    surprisal, bayes, _ = one_task
    broken = surprisal.with_columns(uniform_bits=pl.col("uniform_bits") + pl.col("example"))
    with pytest.raises(ValueError, match="expected one uniform_bits"):
        plots.build_lm_surprisal(broken, bayes)


def test_uninformative_fit_is_drawn_apart_and_says_why(tmp_path):
    """A flat curve (c = 0.5): the fitted line is grey and dashed, the legend says why."""
    flat = _surprisal_rows("tiny-a", "flat", 0.5, 0.3, 3, 11)
    bayes = fit_table(flat, n_boot=20)
    row = bayes.filter(pl.col("method") == "prob_mse").row(0, named=True)
    assert row["informative"] is False
    fig = plots.build_lm_prior(flat, bayes)
    ax = fig.axes[0]
    label = next(t for t in _legend_texts(ax) if t.startswith("fitted learner"))
    assert "NOT INFORMATIVE: " in label and "flat line" in label
    fitted = [ln for ln in ax.get_lines() if ln.get_label().startswith("fitted learner")]
    assert len(fitted) == 1 and fitted[0].get_color() == "0.6"
    assert fitted[0].get_linestyle() == "--"  # matplotlib's name for any custom dash pattern
    assert not [ln for ln in ax.get_lines() if ln.get_color() == "C3"]
    plt.close(fig)
    fig = plots.build_simulated_prior(bayes)
    assert "NOT INFORMATIVE" in _legend_texts(fig.axes[0])[0]
    plt.close(fig)


def test_informative_fit_keeps_its_red_line(one_task):
    surprisal, bayes, _ = one_task
    assert bayes.filter(pl.col("method") == "prob_mse")["informative"].item() is True
    fig = plots.build_lm_prior(surprisal, bayes)
    label = next(t for t in _legend_texts(fig.axes[0]) if t.startswith("fitted learner"))
    assert "NOT INFORMATIVE" not in label
    plt.close(fig)


def test_c_by_model_and_task_draws_uninformative_fits_hollow(bayes_all):
    flat = fit_table(_surprisal_rows("tiny-a", "flat", 0.5, 0.3, 3, 11), n_boot=20)
    table = pl.concat([bayes_all, flat])
    fig = plots.build_c_by_model_and_task(table)
    for panel in fig.axes:
        hollow = [ln for ln in panel.get_lines() if ln.get_markerfacecolor() == "white"]
        assert sum(len(ln.get_xdata()) for ln in hollow) == 1
    assert "hollow marker: fit not informative" in fig._suptitle.get_text()
    plt.close(fig)
