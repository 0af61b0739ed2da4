"""What every iclprobe figure shares: size, seaborn style, titles, and the atomic save.

Figures are drawn inside `drawing()` (seaborn's style; figures opened inside are
closed if drawing fails) and written with `save()`, which goes through the one
atomic writer of `iclprobe.io`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from iclprobe.io import atomic_output

DPI = 120
FIG_SIZE = (8.0, 5.0)
BAND = ("pi", 95)
BAND_TEXT = "band: central 95% of replicates"
EXAMPLE_LABEL = "example i (1-based)"


def title(what: str, model: str, task: str, function: str | None) -> str:
    task_text = f"{task} ({function})" if function else task
    return f"{what}\nmodel: {model} · task: {task_text}"


@contextmanager
def drawing() -> Iterator[None]:
    """The figures' seaborn style; figures opened inside are closed if drawing fails."""
    opened = set(plt.get_fignums())
    try:
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            yield
    except BaseException:
        for number in set(plt.get_fignums()) - opened:
            plt.close(number)
        raise


def new_axes():
    _, ax = plt.subplots(figsize=FIG_SIZE, dpi=DPI)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return ax


def finish(ax, heading: str, ylabel: str, xlabel: str = EXAMPLE_LABEL) -> Figure:
    ax.set_title(heading)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    # Below the axes, so that it never hides a curve or the reference lines.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small", frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as PNG through the atomic writer, then close it."""
    path = Path(path)
    try:
        with atomic_output(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return path
