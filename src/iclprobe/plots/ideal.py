"""The information each task took the model against the ideal learner (iclprobe.ideal).

One panel per model: per task, I_N in bits over its N examples for the model and for the
ideal learner (mean over replicates, bars the central 95 % of replicates), and the uniform
code N·log₂|Y| that a learner who learns nothing pays. The gap between the model's and the
ideal learner's marker is the model's excess information.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.figure import Figure

from iclprobe.ideal import information_summary
from iclprobe.plots import style

_SERIES = (  # summary column, legend label, marker style
    ("model_bits", "model: I_N, mean of replicates", {"color": "C0", "marker": "o"}),
    ("ideal_bits", "ideal learner: I_N, mean of replicates", {"color": "C4", "marker": "^"}),
)


def build_ideal_information(table: pl.DataFrame, level: float = 0.95) -> Figure:
    """I_N of the model vs the ideal learner per task (rows), one panel per model."""
    if table.height == 0:
        raise ValueError("the ideal-learner table is empty")
    summary = information_summary(table, level)
    models = sorted(summary["model"].unique().to_list())
    tasks = sorted(summary["task"].unique().to_list())
    with style.drawing():
        fig, axes = plt.subplots(
            1, len(models), figsize=(9 * len(models), 1.2 + 0.55 * len(tasks) + 2.5),
            dpi=style.DPI, squeeze=False, sharey=True,
        )  # fmt: skip
        for ax, model in zip(axes[0], models, strict=True):
            rows = summary.filter(pl.col("model") == model)
            y = np.array([tasks.index(t) for t in rows["task"]], dtype=float)
            for offset, (column, label, marker) in zip((-0.12, 0.12), _SERIES, strict=True):
                mean = rows[column].to_numpy()
                err = np.vstack(
                    [mean - rows[f"{column}_lo"].to_numpy(), rows[f"{column}_hi"].to_numpy() - mean]
                )
                ax.errorbar(
                    mean, y + offset, xerr=np.clip(err, 0, None), fmt=marker["marker"],
                    color=marker["color"], capsize=3, markersize=7, label=label,
                )  # fmt: skip
            ax.scatter(
                rows["uniform_bits"], y, marker="|", s=300, color="0.3", zorder=3,
                label="uniform code N·log₂|Y| (learns nothing)",
            )  # fmt: skip
            for yi, row in zip(y, rows.iter_rows(named=True), strict=True):
                ax.annotate(
                    f"+{row['excess_bits']:.0f} bits",
                    (max(row["model_bits_hi"], row["ideal_bits_hi"]), yi),
                    xytext=(6, -3), textcoords="offset points", fontsize="x-small", color="C0",
                )  # fmt: skip
            ax.set_yticks(range(len(tasks)), tasks)
            ax.set_ylim(len(tasks) - 0.5, -0.5)
            right = max(rows["model_bits_hi"].max(), rows["ideal_bits_hi"].max())
            ax.set_xlim(0, 1.15 * max(right, rows["uniform_bits"].max()))  # room for the labels
            ns = sorted(set(rows["n_examples"].to_list()))
            over = f"N = {ns[0]}" if len(ns) == 1 else "N = each task's examples"
            ax.set_xlabel(f"information to learn the task, I_N = Σ surprisal (bits), {over}")
            ax.set_title(f"model: {model}", fontsize="small")
        first = summary.sort("family_size").row(0, named=True)
        added = summary.filter(pl.col("task_rule_added"))["task"].unique().sort().to_list()
        own = f", plus the task's own rule for {', '.join(added)}" if added else ""
        ideal = (
            f"ideal learner: rules {first['family']} ({first['family_size']:,} rules, log₂ = "
            f"{first['log2_family_size']:.1f} bits){own}, and “none of these” (ε = "
            f"{first['none_prior']:g}); bars: central {level:.0%} of replicates; label: the "
            "model's excess bits I_N(model) − I_N(ideal)"
        )
        fig.suptitle(
            "Information needed to learn each task: the model against the ideal learner\n"
            + textwrap.fill(ideal, 100),
            fontsize="medium",
        )
        axes[0][0].set_ylabel("task")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize="small", frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        return fig


def ideal_information(table: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write the cross-task figure of I_N, model vs ideal learner, to a PNG."""
    return style.save(build_ideal_information(table), path)
