"""Figures of in-context learning curves and of the Bayesian learner fitted to them.

Per (model, task), after the seed essay: the LM's surprisal and P(A) per example with a band
over replicates, the fitted learner and the ideal learner (iclprobe.ideal) overlaid, the
learner alone beside the c = ln 2 learner, and the information needed to learn the task
(cumulative surprisal of the LM, the fitted and the ideal learner against the uniform code and
the shuffled control). Across models and tasks: the fitted c with its interval.

Each figure has a ``build_*`` function returning the open Figure (for inspection) and a
function of the same name without the prefix that builds it and saves it atomically to a PNG.
Bands are percentile intervals over replicates (``style.BAND``), not confidence intervals of the
mean; the legend says so.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure

from iclprobe.bayes import LN2, METHODS, simulate_learner
from iclprobe.plots import style

# Per-example quantity -> (what the figure shows, y-axis label).
_QUANTITIES = {
    "surprisal_bits": ("surprisal of the correct answer", "surprisal −log₂ P(yᵢ) (bits)"),
    "p_correct": ("probability of the correct answer, P(A)", "P(A) (probability)"),
}

TASK_FIGURES = (
    "lm-surprisal.png",
    "lm-prior.png",
    "simulated-surprisal.png",
    "simulated-prior.png",
    "cumulative-information.png",
)


# ---------------------------------------------------------------------------- helpers


def _only(frame: pl.DataFrame, column: str):
    """The single value of ``column`` in ``frame``; raise if it is absent or not unique."""
    values = frame[column].unique().to_list()
    if len(values) != 1:
        raise ValueError(f"expected one {column} in the table, found {sorted(map(str, values))}")
    return values[0]


def _ids(frame: pl.DataFrame) -> tuple[str, str]:
    if frame.height == 0:
        raise ValueError("the table is empty")
    return str(_only(frame, "model")), str(_only(frame, "task"))


def _fit_row(
    bayes: pl.DataFrame, method: str, model: str | None = None, task: str | None = None
) -> dict:
    """The one bayes row for ``method`` (and the given model and task, when given)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods are {', '.join(METHODS)}")
    rows = bayes.filter(pl.col("method") == method)
    if model is not None:
        rows = rows.filter((pl.col("model") == model) & (pl.col("task") == task))
    if rows.height != 1:
        where = f" for model {model!r}, task {task!r}" if model is not None else ""
        raise ValueError(f"expected one {method!r} fit{where}, found {rows.height}")
    return rows.row(0, named=True)


def _fit_label(row: dict) -> str:
    """'c = 0.693 [0.61, 0.77] (95% bootstrap CI), θ₀ = 0.120', or a note when no interval.

    A fit that is not informative (see iclprobe.bayes) says so, and why, on a new line.
    """
    c_lo, c_hi = row["c_lo"], row["c_hi"]
    if c_lo is None or c_hi is None or math.isnan(c_lo) or math.isnan(c_hi):
        interval = f" (no interval: {row['n_replicates']} replicate)"
    else:
        interval = f" [{c_lo:.3f}, {c_hi:.3f}] ({row['interval_level']:.0%} bootstrap CI)"
    label = f"c = {row['c']:.3f}{interval}, θ₀ = {row['theta0']:.3g}"
    if not _informative(row):
        note = textwrap.fill(f"NOT INFORMATIVE: {row['fit_note']}", 100, subsequent_indent="  ")
        label += "\n" + note
    return label


def _informative(row: dict) -> bool:
    """False when the bayes table says the fit describes nothing (tables without the column: True)."""
    return row.get("informative") is not False


def _fit_style(row: dict, informative_style: dict) -> dict:
    """The fitted line's style: grey and dotted when the fit is not informative."""
    return informative_style if _informative(row) else _UNINFORMATIVE_STYLE


def _n_examples(surprisal: pl.DataFrame) -> int:
    return int(surprisal["example"].max())


def _learner_curve(c: float, theta0: float, n: int) -> pl.DataFrame:
    """The learner's P(A) at examples 1..n (theta_{i-1}) and its surprisal in bits."""
    theta = simulate_learner(c, theta0, n)
    return pl.DataFrame(
        {"example": np.arange(1, n + 1), "p_correct": theta, "surprisal_bits": -np.log2(theta)}
    )


def _draw_learner(ax, c: float, theta0: float, n: int, y: str, label: str, **line) -> None:
    curve = _learner_curve(c, theta0, n).to_pandas()
    sns.lineplot(data=curve, x="example", y=y, ax=ax, label=label, **line)


def _draw_replicates(ax, frame: pl.DataFrame, y: str, who: str, **line) -> None:
    """Mean over replicates with the percentile band."""
    n_rep = frame["replicate"].n_unique()
    label = f"{who}: mean of {n_rep} replicates ({style.BAND_TEXT})"
    data = frame.select("replicate", "example", y).to_pandas()
    sns.lineplot(data=data, x="example", y=y, errorbar=style.BAND, ax=ax, label=label, **line)


def _draw_ideal(ax, ideal: pl.DataFrame | None, y: str) -> None:
    """The ideal learner's mean over replicates with its band (it saw the LM's prompts)."""
    if ideal is None or ideal.height == 0:
        return
    n_rep = ideal["replicate"].n_unique()
    size = int(_only(ideal, "family_size"))
    label = f"ideal learner ({size:,} rules + “none of these”): mean of {n_rep} replicates"
    data = ideal.select("replicate", "example", pl.col(f"ideal_{y}").alias(y)).to_pandas()
    sns.lineplot(
        data=data, x="example", y=y, errorbar=style.BAND, ax=ax, label=label, **_IDEAL_STYLE
    )


def _draw_control(ax, control: pl.DataFrame | None, y: str, **line) -> None:
    if control is None or control.height == 0:
        return
    n_rep = control["replicate"].n_unique()
    data = control.select("example", y).to_pandas()
    label = f"shuffled control: mean of {n_rep} replicates"
    sns.lineplot(data=data, x="example", y=y, errorbar=None, ax=ax, label=label, **line)


_LM_STYLE = {"color": "C0", "marker": "o", "markersize": 4}
_FIT_STYLE = {"color": "C3", "linestyle": "--"}
_REF_STYLE = {"color": "0.35", "linestyle": ":", "linewidth": 2}
_CONTROL_STYLE = {"color": "C2", "linestyle": "-.", "marker": "s", "markersize": 3}
_UNINFORMATIVE_STYLE = {"color": "0.6", "linestyle": (0, (6, 3)), "linewidth": 1.2}
_IDEAL_STYLE = {"color": "C4", "linestyle": "-", "linewidth": 1.5, "marker": "^", "markersize": 3}


# ------------------------------------------------------------------- per-task figures


def _build_lm(
    surprisal: pl.DataFrame,
    bayes: pl.DataFrame,
    y: str,
    control: pl.DataFrame | None,
    method: str,
    function: str | None,
    ideal: pl.DataFrame | None = None,
) -> Figure:
    """LM curve of ``y`` with band, the fitted learner, the ideal learner and the control's
    mean if given and (for surprisal) the uniform code."""
    model, task = _ids(surprisal)
    row = _fit_row(bayes, method, model, task)
    what, ylabel = _QUANTITIES[y]
    with style.drawing():
        ax = style.new_axes()
        _draw_replicates(ax, surprisal, y, "LM", **_LM_STYLE)
        label = f"fitted learner ({method}): {_fit_label(row)}"
        line = _fit_style(row, _FIT_STYLE)
        _draw_learner(ax, row["c"], row["theta0"], _n_examples(surprisal), y, label, **line)
        _draw_ideal(ax, ideal, y)
        _draw_control(ax, control, y, **_CONTROL_STYLE)
        if y == "surprisal_bits":
            uniform = float(_only(surprisal, "uniform_bits"))
            ax.axhline(uniform, label=f"uniform code log₂|Y| = {uniform:.2f} bits", **_REF_STYLE)
            ax.set_ylim(bottom=0)
        else:
            ax.set_ylim(-0.02, 1.02)
        return style.finish(ax, style.title(f"LM {what}", model, task, function), ylabel)


def build_lm_surprisal(
    surprisal, bayes, control=None, method="prob_mse", function=None, ideal=None
) -> Figure:
    return _build_lm(surprisal, bayes, "surprisal_bits", control, method, function, ideal)


def build_lm_prior(
    surprisal, bayes, control=None, method="prob_mse", function=None, ideal=None
) -> Figure:
    return _build_lm(surprisal, bayes, "p_correct", control, method, function, ideal)


def lm_surprisal(
    surprisal, bayes, path, control=None, method="prob_mse", function=None, ideal=None
) -> Path:
    """The seed's lm-surprisal figure: LM surprisal (bits) per example, fit and references."""
    figure = build_lm_surprisal(surprisal, bayes, control, method, function, ideal)
    return style.save(figure, path)


def lm_prior(
    surprisal, bayes, path, control=None, method="prob_mse", function=None, ideal=None
) -> Path:
    """The seed's lm-prior figure: LM P(A) per example with the fitted and the ideal learner's."""
    return style.save(build_lm_prior(surprisal, bayes, control, method, function, ideal), path)


def _build_simulated(bayes: pl.DataFrame, y: str, method: str, function: str | None) -> Figure:
    """The fitted learner's curve of ``y`` beside the c = ln 2 learner with the same θ₀."""
    row = _fit_row(bayes, method)
    n = int(row["n_examples"])
    what, ylabel = _QUANTITIES[y]
    ylabel = ylabel.replace("P(yᵢ)", "θᵢ₋₁").replace("P(A)", "learner belief θᵢ₋₁ = P(A)")
    with style.drawing():
        ax = style.new_axes()
        fitted = f"fitted learner ({method}): {_fit_label(row)}"
        line = _fit_style(row, {"marker": "o", "color": "C3"})
        _draw_learner(ax, row["c"], row["theta0"], n, y, fitted, **line)
        reference = f"reference learner: c = ln 2 ≈ {LN2:.3f}, θ₀ = {row['theta0']:.3g}"
        _draw_learner(ax, LN2, row["theta0"], n, y, reference, **_REF_STYLE)
        if y == "p_correct":
            ax.set_ylim(-0.02, 1.02)
        else:
            ax.set_ylim(bottom=0)
        title = style.title(
            f"Simulated Bayesian learner: {what}", row["model"], row["task"], function
        )
        return style.finish(ax, title, ylabel)


def build_simulated_surprisal(bayes, method="prob_mse", function=None) -> Figure:
    return _build_simulated(bayes, "surprisal_bits", method, function)


def build_simulated_prior(bayes, method="prob_mse", function=None) -> Figure:
    return _build_simulated(bayes, "p_correct", method, function)


def simulated_surprisal(bayes, path, method="prob_mse", function=None) -> Path:
    """The seed's simulated-surprisal figure: -log₂ θᵢ₋₁ for the fitted c and for c = ln 2."""
    return style.save(build_simulated_surprisal(bayes, method, function), path)


def simulated_prior(bayes, path, method="prob_mse", function=None) -> Path:
    """The seed's simulated-prior figure: θᵢ₋₁ for the fitted c and for c = ln 2."""
    return style.save(build_simulated_prior(bayes, method, function), path)


def _draw_learner_information(ax, row: dict, n: int, method: str) -> None:
    """The fitted learner's cumulative surprisal −Σ log₂ θᵢ₋₁, from I_0 = 0."""
    curve = _learner_curve(row["c"], row["theta0"], n)
    ks = np.arange(0, n + 1)
    bits = np.concatenate([[0.0], np.cumsum(curve["surprisal_bits"].to_numpy())])
    label = f"fitted learner ({method}): c = {row['c']:.3f}"
    if not _informative(row):
        label += " (NOT INFORMATIVE)"
    sns.lineplot(x=ks, y=bits, ax=ax, label=label, **_fit_style(row, _FIT_STYLE))


def build_cumulative_information(
    surprisal, control=None, function=None, ideal=None, bayes=None, method="prob_mse"
) -> Figure:
    """I_k = Σ_{i≤k} sᵢ with band beside the fitted learner's and the ideal learner's (when
    given), the uniform code k·log₂|Y| and the shuffled control."""
    model, task = _ids(surprisal)
    y = "cumulative_bits"
    uniform = float(_only(surprisal, "uniform_bits"))
    with style.drawing():
        ax = style.new_axes()
        _draw_replicates(ax, surprisal, y, "LM", **_LM_STYLE)
        if bayes is not None:
            row = _fit_row(bayes, method, model, task)
            _draw_learner_information(ax, row, _n_examples(surprisal), method)
        _draw_ideal(ax, ideal, y)
        _draw_control(ax, control, y, **_CONTROL_STYLE)
        ks = np.arange(0, _n_examples(surprisal) + 1)
        label = f"uniform code k·log₂|Y| ({uniform:.2f} bits per example)"
        sns.lineplot(x=ks, y=ks * uniform, ax=ax, label=label, **_REF_STYLE)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        title = style.title(
            r"Information to learn the task, $I_k = \sum_{i \leq k}\, s_i$",
            model,
            task,
            function,
        )
        return style.finish(ax, title, r"cumulative surprisal $I_k$ (bits)", "examples seen k")


def cumulative_information(
    surprisal, path, control=None, function=None, ideal=None, bayes=None, method="prob_mse"
) -> Path:
    """Cumulative surprisal: the information the LM needed to learn the task."""
    figure = build_cumulative_information(surprisal, control, function, ideal, bayes, method)
    return style.save(figure, path)


def task_figures(
    surprisal: pl.DataFrame,
    bayes: pl.DataFrame,
    out_dir: str | os.PathLike,
    control: pl.DataFrame | None = None,
    function: str | None = None,
    method: str = "prob_mse",
    ideal: pl.DataFrame | None = None,
) -> list[Path]:
    """Write the five per-task figures (``TASK_FIGURES``) into ``out_dir``; return the paths.

    `ideal` is the ideal learner's table of the same task (iclprobe.ideal), drawn where given.
    """
    model, task = _ids(surprisal)
    row_bayes = bayes.filter((pl.col("model") == model) & (pl.col("task") == task))
    out = Path(out_dir)
    paths = dict(zip(TASK_FIGURES, (out / name for name in TASK_FIGURES), strict=True))
    common = {"control": control, "method": method, "function": function, "ideal": ideal}
    return [
        lm_surprisal(surprisal, row_bayes, paths["lm-surprisal.png"], **common),
        lm_prior(surprisal, row_bayes, paths["lm-prior.png"], **common),
        simulated_surprisal(row_bayes, paths["simulated-surprisal.png"], method, function),
        simulated_prior(row_bayes, paths["simulated-prior.png"], method, function),
        cumulative_information(
            surprisal, paths["cumulative-information.png"], bayes=row_bayes, **common
        ),
    ]


# ------------------------------------------------------------------ cross-model figure


def _draw_c_points(*, data, tasks: list[str], models: list[str], color, label, **_) -> None:
    """One model's fitted c per task, dodged by model, with bars where an interval exists."""
    ax = plt.gca()
    step = min(0.15, 0.6 / len(models))
    offset = (models.index(label) - (len(models) - 1) / 2) * step
    x = np.array([tasks.index(t) for t in data["task"]], dtype=float) + offset
    c = data["c"].to_numpy(dtype=float)
    lo = data["c_lo"].to_numpy(dtype=float)
    hi = data["c_hi"].to_numpy(dtype=float)
    has = np.isfinite(lo) & np.isfinite(hi)
    yerr = np.vstack([np.clip(c - lo, 0, None), np.clip(hi - c, 0, None)])[:, has]
    ax.errorbar(x[has], c[has], yerr=yerr, fmt="none", ecolor=color, capsize=4, elinewidth=1.5)
    # Filled: the fit describes the curve; hollow: it is not informative (see fit_note).
    solid = data["informative"].fillna(True).to_numpy(dtype=bool)
    ax.plot(x[solid], c[solid], "o", color=color, markersize=7, label=label)
    ax.plot(x[~solid], c[~solid], "o", mfc="white", mec=color, mew=1.5, markersize=7)


def _legend_data(axes) -> dict:
    """Handles by label over all panels (a model may be missing from one method's panel)."""
    data: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            data.setdefault(label, handle)
    return data


def _interval_caption(bayes_all: pl.DataFrame) -> str:
    levels = bayes_all["interval_level"].drop_nulls().unique().to_list()
    level = f"{levels[0]:.0%} " if len(levels) == 1 else ""
    return (
        f"bars: {level}bootstrap interval over replicates; no bar: no interval (one replicate)\n"
        "hollow marker: fit not informative (see fit_note in bayes.parquet)"
    )


def build_c_by_model_and_task(bayes_all: pl.DataFrame) -> Figure:
    """Fitted c per task (x), one colour per model, one panel per method; line at ln 2."""
    if bayes_all.height == 0:
        raise ValueError("the bayes table is empty")
    tasks = sorted(bayes_all["task"].unique().to_list())
    models = sorted(bayes_all["model"].unique().to_list())
    methods = [m for m in METHODS if m in set(bayes_all["method"].to_list())]
    if "informative" not in bayes_all.columns:
        bayes_all = bayes_all.with_columns(informative=pl.lit(True))
    data = bayes_all.select(
        "model", "task", "method", "c", "c_lo", "c_hi", "informative"
    ).to_pandas()
    with style.drawing():
        grid = sns.FacetGrid(
            data, col="method", col_order=methods, hue="model", hue_order=models,
            height=4.5, aspect=max(1.0, 0.35 * len(tasks)), dropna=False,
        )  # fmt: skip
        grid.map_dataframe(_draw_c_points, tasks=tasks, models=models)
        for ax in grid.axes.flat:
            ax.axhline(LN2, label="c = ln 2 (seed)", zorder=1, **_REF_STYLE)
            ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
            ax.set_xlim(-0.5, len(tasks) - 0.5)
            ax.grid(visible=False, axis="x")
            ax.set_ylim(0, 1)
        grid.set_titles("method: {col_name}")
        grid.set_axis_labels("task", "fitted sensitivity c (probability)")
        legend = _legend_data(grid.axes.flat)
        grid.add_legend(legend_data=legend, label_order=list(legend), title="model")
        grid.figure.suptitle(
            f"Fitted learner sensitivity c by model and task\n{_interval_caption(bayes_all)}"
        )
        grid.figure.set_dpi(style.DPI)
        grid.tight_layout()
        return grid.figure


def c_by_model_and_task(bayes_all: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Cross-model figure of the fitted c with its interval, per task and method."""
    return style.save(build_c_by_model_and_task(bayes_all), path)
