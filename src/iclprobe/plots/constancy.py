"""The figure that answers "is c a constant?" (iclprobe.constancy).

One row per fitting method. Left: c with its bootstrap interval for every learned
(model, task) counted in the comparison, against ln 2 (the seed's value) and 0.5 (no
learning); the units left out are named below the panel with the reason. Right: the test
of equal c between every two counted units, as a matrix of c_row − c_column with the
Holm-adjusted p-value in each cell (bold where the difference is significant).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure

from iclprobe.bayes import LN2, METHODS
from iclprobe.plots import style

_METHOD_TEXT = {
    "prob_mse": "prob_mse (squared error on P(A), the seed's)",
    "logodds": "logodds (a straight line in log-odds)",
}


def _label(model: str, task: str, several_models: bool) -> str:
    return f"{task}\n({model})" if several_models else task


def _intervals(ax, counted: pl.DataFrame, left_out: pl.DataFrame, several: bool) -> None:
    """c with its interval per counted unit, sorted by c; references at ln 2 and 0.5."""
    rows = counted.sort("c")
    x = np.arange(rows.height)
    c = rows["c"].to_numpy()
    lo = rows["c_lo"].fill_null(np.nan).to_numpy()
    hi = rows["c_hi"].fill_null(np.nan).to_numpy()
    yerr = np.vstack([np.clip(c - lo, 0, None), np.clip(hi - c, 0, None)])
    ax.errorbar(
        x, c, yerr=np.nan_to_num(yerr), fmt="o", color="C0", capsize=5, markersize=6,
        label="fitted c with its bootstrap interval",
    )  # fmt: skip
    ax.axhline(LN2, color="0.35", linestyle=":", linewidth=2, label=f"c = ln 2 ≈ {LN2:.3f} (seed)")
    ax.axhline(0.5, color="C3", linestyle="--", linewidth=1, label="c = 0.5 (no learning)")
    labels = [_label(m, t, several) for m, t in rows.select("model", "task").iter_rows()]
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_xlim(-0.6, max(rows.height, 1) - 0.4)
    top = max(LN2, float(np.nanmax(hi)) if rows.height and np.isfinite(hi).any() else LN2)
    ax.set_ylim(0.49, top + 0.02)
    ax.set_ylabel("fitted sensitivity c (probability)")
    ax.legend(loc="best", fontsize="small")
    if rows.height == 0:
        ax.text(0.5, 0.5, "no learned task with an informative fit", ha="center",
                transform=ax.transAxes)  # fmt: skip
    if left_out.height:
        # The first, most basic reason of each (a control, not learned, an uninformative fit).
        names = "; ".join(
            f"{_label(m, t, several).replace(chr(10), ' ')} ({reasons[0]})"
            for m, t, reasons in left_out.select("model", "task", "reasons").iter_rows()
        )
        note = textwrap.fill(f"Not counted: {names}", 100)
        ax.annotate(note, (0, -0.3), xycoords="axes fraction", va="top", fontsize="x-small")


def _matrix(ax, counted: pl.DataFrame, pairs: pl.DataFrame, several: bool, top: float) -> None:
    """c_row − c_column for every two counted units, with the Holm-adjusted p-value; the
    colour scale runs from 0 to `top` in every panel, so that panels compare."""
    rows = counted.sort("c")
    keys = list(rows.select("model", "task").iter_rows())
    if len(keys) < 2:
        ax.text(0.5, 0.5, "fewer than two learned tasks:\nnothing to test", ha="center",
                va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
        return
    index = {key: i for i, key in enumerate(keys)}
    n = len(keys)
    # Units sorted by c: below the diagonal, row minus column is the larger c minus the smaller.
    diff = np.full((n, n), np.nan)
    text = np.full((n, n), "", dtype=object)
    for row in pairs.iter_rows(named=True):
        i, j = index[(row["model_a"], row["task_a"])], index[(row["model_b"], row["task_b"])]
        r, c, sign = (i, j, 1) if i > j else (j, i, -1)
        star = "*" if row["differs"] else ""
        diff[r, c] = sign * row["difference"]
        text[r, c] = f"{sign * row['difference']:+.3f}\np = {row['p_holm']:.2g}{star}"
    labels = [_label(m, t, several) for m, t in keys]
    sns.heatmap(
        diff[1:, :-1], ax=ax, cmap="Reds", vmin=0, vmax=top, annot=text[1:, :-1],
        fmt="", annot_kws={"fontsize": "small"}, xticklabels=labels[:-1],
        yticklabels=labels[1:], cbar_kws={"label": "c(row) − c(column)"}, linewidths=1,
        linecolor="white", mask=np.isnan(diff[1:, :-1]),
    )  # fmt: skip
    ax.grid(visible=False)
    ax.tick_params(axis="x", rotation=30)
    ax.tick_params(axis="y", rotation=0)
    test = pairs.row(0, named=True)
    ax.set_title(
        f"test of equal c: Holm-adjusted p ({test['n_boot']} bootstrap resamples per task);\n"
        f"* differs at family-wise α = {test['alpha']:g}",
        fontsize="small",
    )


def _verdict(counted: pl.DataFrame, pairs: pl.DataFrame) -> str:
    k = counted.height
    if k < 2:
        return f"{k} learned task{'s' if k != 1 else ''}: no comparison"
    n_differ = int(pairs["differs"].sum())
    inside = int(counted["ln2_inside"].fill_null(False).sum())
    return (
        f"{k} learned: {n_differ} of {pairs.height} pairs differ; ln 2 inside {inside} of {k} "
        "intervals"
    )


def build_c_constancy(units: pl.DataFrame, pairs: pl.DataFrame) -> Figure:
    """Is c a constant? One row per method: intervals (left) and the pairwise test (right)."""
    if units.height == 0:
        raise ValueError("the constancy table is empty")
    methods = [m for m in METHODS if m in set(units["method"].to_list())]
    several = units["model"].n_unique() > 1
    top = max(1e-3, float(pairs["difference"].abs().max() or 0.0))
    with style.drawing():
        fig, axes = plt.subplots(
            len(methods), 2, figsize=(14, 5.6 * len(methods)), dpi=style.DPI, squeeze=False,
            gridspec_kw={"width_ratios": [1, 1.1]},
        )  # fmt: skip
        for (left, right), method in zip(axes, methods, strict=True):
            mine = units.filter(pl.col("method") == method)
            counted = mine.filter(pl.col("in_verdict"))
            tests = pairs.filter(pl.col("method") == method)
            _intervals(left, counted, mine.filter(~pl.col("in_verdict")), several)
            left.set_title(f"method: {_METHOD_TEXT[method]}\n{_verdict(counted, tests)}",
                           fontsize="small")  # fmt: skip
            _matrix(right, counted, tests, several, top)
        levels = units["interval_level"].drop_nulls().unique().to_list()
        level_text = f"{levels[0]:.0%} " if len(levels) == 1 else ""
        threshold = units["min_p_correct"][0]
        fig.suptitle(
            "Is c a constant? The fitted sensitivity c of the tasks the model learned\n"
            f"bars: {level_text}bootstrap interval over replicates; counted: mean P(A) at the "
            f"last example ≥ {threshold:g}, an informative fit, not a control"
        )
        fig.tight_layout(h_pad=3)
        return fig


def c_constancy(units: pl.DataFrame, pairs: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write the c-constancy figure to a PNG."""
    return style.save(build_c_constancy(units, pairs), path)
