"""The probe figure: the function the model infers from its first k examples.

One column per k (examples kept as context). Top row: the model's greedy
answer against the query x, with the lines y = x (echo the query) and
y = f(x) (the task); bottom row: the residual y_true − y_pred, with the
residual a model answering y = x would have. After the seed's
`zero-examples`, `two-examples` and `three-examples` figures, all k at once.

Filled points are answers the model finished with the terminator; hollow
points are integers it wrote and followed with something else (after "(0,"
with no examples, SmolLM2 continues a list: " 1, 2, …"). Points beyond the
axis limits sit on the edge as triangles, so one wild answer does not squash
the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from iclprobe.plots import style

_TASK_LINE = {"color": "black", "linewidth": 1.2, "zorder": 1}
_ECHO_LINE = {"color": "0.45", "linewidth": 1.2, "linestyle": "--", "zorder": 1}
_MARGIN = 0.25  # of the span of the reference values, on each side of the axis


def _limits(values: np.ndarray, floor: float = 5.0) -> tuple[float, float]:
    lo, hi = float(values.min()), float(values.max())
    margin = max(_MARGIN * (hi - lo), floor)
    return lo - margin, hi + margin


def _long(table: pl.DataFrame) -> pl.DataFrame:
    """One row per point drawn: panel (answer / residual), value, and how it is drawn."""
    shown = pl.col("y_pred").is_not_null() | pl.col("y_written").is_not_null()
    value = pl.coalesce("y_pred", "y_written")
    base = table.filter(shown).select(
        "k",
        "x",
        "replicate",
        pl.col("y_pred").is_not_null().alias("finished"),
        value.alias("answer"),
        (pl.col("y_true") - value).alias("residual"),
    )
    return base.unpivot(
        on=["answer", "residual"], index=["k", "x", "replicate", "finished"], variable_name="panel"
    )


def _draw_points(*, data, limits: dict, color, label, **_) -> None:
    """One replicate's points in one panel: filled if finished, triangles on the edges."""
    import matplotlib.pyplot as plt

    ax = plt.gca()
    panel = data["panel"].iloc[0]
    lo, hi = limits[panel]
    y = data["value"].to_numpy(dtype=float)
    x = data["x"].to_numpy(dtype=float)
    finished = data["finished"].to_numpy(dtype=bool)
    inside = (y >= lo) & (y <= hi)
    for keep, face in ((finished, color), (~finished, "none")):
        sel = keep & inside
        ax.scatter(x[sel], y[sel], s=14, facecolors=face, edgecolors=color, linewidths=0.8)
        for edge, marker in ((y > hi, "^"), (y < lo, "v")):
            sel = keep & edge
            clipped = np.full(sel.sum(), hi if marker == "^" else lo)
            ax.scatter(x[sel], clipped, s=22, marker=marker, facecolors=face, edgecolors=color)


def _summary(table: pl.DataFrame) -> dict[int, str]:
    """Per k: the share of exact answers and of answers without the terminator."""
    per_k = table.group_by("k").agg(
        (pl.col("y_pred") == pl.col("y_true")).fill_null(False).mean().alias("exact"),
        pl.col("y_pred").is_null().mean().alias("unfinished"),
    )
    return {k: f"k = {k}\nexact {e:.0%} · unfinished {u:.0%}" for k, e, u in per_k.iter_rows()}


def build_probe(table: pl.DataFrame, function: str | None = None) -> Figure:
    """Predicted y and residual against x, one column per k (see the module docstring)."""
    if table.height == 0:
        raise ValueError("the probe table is empty")
    model, task = (str(table[c].unique().to_list()[0]) for c in ("model", "task"))
    ks = sorted(table["k"].unique().to_list())
    replicates = sorted(table["replicate"].unique().to_list())
    truth = table.select("x", "y_true").unique().sort("x")
    xs, fx = truth["x"].to_numpy(), truth["y_true"].to_numpy()
    lo, hi = _limits(np.concatenate([xs, fx]))
    # Every answer inside the top panel's limits has its residual inside the bottom's.
    limits = {"answer": (lo, hi), "residual": (float(fx.min()) - hi, float(fx.max()) - lo)}
    data = _long(table).to_pandas()
    titles = _summary(table)
    with style.drawing():
        grid = sns.FacetGrid(
            data, row="panel", row_order=["answer", "residual"], col="k", col_order=ks,
            hue="replicate", hue_order=replicates, sharey="row", height=2.8, aspect=0.95,
            margin_titles=False, dropna=False, despine=False,
        )  # fmt: skip
        grid.map_dataframe(_draw_points, limits=limits)
        for (panel, k), ax in grid.axes_dict.items():
            if panel == "answer":
                ax.plot(xs, xs, **_ECHO_LINE)
                ax.plot(xs, fx, **_TASK_LINE)
                ax.set_title(titles.get(k, f"k = {k}"), fontsize="small")
            else:
                ax.plot(xs, fx - xs, **_ECHO_LINE)
                ax.axhline(0, **_TASK_LINE)
                ax.set_title("")
            ax.set_ylim(*limits[panel])
        grid.set_axis_labels("query x", "")
        grid.axes[0, 0].set_ylabel("greedy answer y_pred")
        grid.axes[1, 0].set_ylabel("residual y_true − y_pred")
        _legend(grid, replicates)
        heading = style.title(
            "What the model answers after its first k examples, for every query x",
            model,
            task,
            function,
        )
        grid.figure.suptitle(heading, fontsize="medium")
        grid.figure.set_dpi(style.DPI)
        grid.figure.tight_layout(rect=(0, 0.1, 1, 1))
        return grid.figure


def _legend(grid, replicates: list[int]) -> None:
    palette = sns.color_palette(n_colors=len(replicates))
    handles = [
        Line2D([], [], label="y = f(x) (task); residual 0", **_TASK_LINE),
        Line2D([], [], label="y = x (echo the query); its residual f(x) − x", **_ECHO_LINE),
    ]
    for replicate, color in zip(replicates, palette, strict=True):
        handles.append(
            Line2D([], [], marker="o", linestyle="", color=color,
                   label=f"answer ending in the terminator (replicate {replicate})")
        )  # fmt: skip
    hollow = {"linestyle": "", "markerfacecolor": "none", "color": "0.3"}
    handles += [
        Line2D([], [], marker="o", label="integer written without the terminator", **hollow),
        Line2D([], [], marker="^", label="beyond the axis (drawn on its edge)", **hollow),
    ]
    grid.figure.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize="small",
        frameon=False,
    )  # fmt: skip


def probe(table: pl.DataFrame, path: str | os.PathLike, function: str | None = None) -> Path:
    """Build the probe figure of one model and task and save it atomically as PNG."""
    return style.save(build_probe(table, function), path)
