"""Figures of activation patching: task or answer, layer by layer.

Per (model, task): the patched target's probabilities of f(x_target) (the task
carried over), f(x_source) (the answer carried over) and its own unpatched
answer, against layer, with a band over pairs and replicates; and the share of
greedy answers in each class per layer. Across models and tasks: the layers
where the task leads (and where the answer does), on relative depth so that
models of different depth line up. Each figure marks where Hendel et al. 2023
found task vectors (40–45 % of depth in GPT-J and LLaMA-7B) and where the seed
essay saw the task (layers 12–15 of SmolLM2's 30).

Each figure has a ``build_*`` function returning the open Figure and a
function of the same name without the prefix that saves it to a PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import polars as pl
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from iclprobe.patching import OUTCOMES
from iclprobe.patching_windows import HENDEL_2023, SEED_LAYERS
from iclprobe.plots import style

LAYER_LABEL = "layer ℓ patched (0 = embeddings, L = last block)"
DEPTH_LABEL = "relative depth ℓ / L"
BAND_TEXT = "band: 95% bootstrap interval of the mean over pairs and replicates"
_CURVES = {  # column -> legend label
    "p_task": "P(f(x_target)): the task carried over",
    "p_answer": "P(f(x_source)): the answer carried over",
    "p_target_default": "P(target's own answer)",
}
_CLASS_COLORS = dict(zip(OUTCOMES, ("#9e9e9e", "#1f77b4", "#ff7f0e", "#d9d9d9"), strict=True))
_CLASS_LABELS = {
    "target": "target's own answer (unchanged)",
    "task": "task: f(x_target)",
    "answer": "answer: f(x_source)",
    "other": "other",
}
_LEADS = (("task_leads", "#1f77b4", -0.17), ("answer_leads", "#ff7f0e", 0.17))
_HENDEL_STYLE = {"color": "#2ca02c", "alpha": 0.6, "linewidth": 0}
_SEED_STYLE = {"color": "#9467bd", "alpha": 0.6, "linewidth": 0}


def _only(frame: pl.DataFrame, column: str):
    values = frame[column].unique().to_list()
    if len(values) != 1:
        raise ValueError(f"expected one {column} in the table, found {sorted(map(str, values))}")
    return values[0]


def _reference_handles() -> list[Patch]:
    low, high = HENDEL_2023
    first, last, of = SEED_LAYERS
    return [
        Patch(
            label=f"task vectors, Hendel et al. 2023 ({low:.0%}–{high:.0%} of depth)",
            **_HENDEL_STYLE,
        ),
        Patch(label=f"seed essay: task at layers {first}–{last} of {of}", **_SEED_STYLE),
    ]


def _strips(ax, unit: float) -> list[Patch]:
    """Mark the literature's task layers as two strips along the top of the axes.

    `unit` converts relative depth to the x axis (L on a layer axis). Strips
    keep the data visible; the axes leave room for them above the data.
    """
    low, high = HENDEL_2023
    first, last, of = SEED_LAYERS
    spans = ((low, high, 0.955, _HENDEL_STYLE), (first / of, last / of, 0.91, _SEED_STYLE))
    for start, stop, y, look in spans:
        ax.add_patch(
            Rectangle(
                (start * unit, y),
                (stop - start) * unit,
                0.04,
                transform=ax.get_xaxis_transform(),
                clip_on=False,
                **look,
            )
        )
    return _reference_handles()


def _depth_axis(ax, n_layers: int) -> None:
    top = ax.secondary_xaxis("top", functions=(lambda x: x / n_layers, lambda r: r * n_layers))
    top.set_xlabel(DEPTH_LABEL)


def _heading(what: str, table: pl.DataFrame, function: str | None, extra: str = "") -> str:
    model, task = _only(table, "model"), _only(table, "task")
    target = _only(table, "target_context")
    context = "no examples" if target == "zero_shot" else f"examples of {target}"
    line = f"target context: {context}{extra}"
    return style.title(what, model, task, function) + "\n" + line


def build_probabilities(table: pl.DataFrame, function: str | None = None) -> Figure:
    """The three probabilities against layer, over the pairs with three distinct answers."""
    n_layers = int(_only(table, "n_layers"))
    data = table.filter("default_distinct")
    n_pairs = data.select("replicate", "pair").unique().height
    n_all = table.select("replicate", "pair").unique().height
    if data.height == 0:
        raise ValueError("no pair has a target answer apart from f(x_target) and f(x_source)")
    long = data.unpivot(
        index=["replicate", "pair", "layer"], on=list(_CURVES), variable_name="what", value_name="p"
    ).drop_nulls("p")
    long = long.with_columns(pl.col("what").replace_strict(_CURVES))
    with style.drawing():
        fig, ax = plt.subplots(figsize=(8.0, 6.5), dpi=style.DPI)
        sns.lineplot(
            data=long.to_pandas(),
            x="layer",
            y="p",
            hue="what",
            hue_order=list(_CURVES.values()),
            errorbar=("ci", 95),
            n_boot=500,
            seed=0,
            marker="o",
            markersize=3,
            ax=ax,
        )
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        ax.set_ylim(low, high * 30)  # room for the reference strips above the curves
        ax.set_xlim(0, n_layers)
        _depth_axis(ax, n_layers)
        handles, _ = ax.get_legend_handles_labels()
        band = Patch(color="#999999", alpha=0.3, label=BAND_TEXT)
        ax.legend(
            handles=[*handles, band, *_strips(ax, n_layers)],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
            fontsize="small",
            frameon=False,
        )
        extra = f" · {n_pairs} of {n_all} pairs\n(those whose unpatched target answers neither f(x_target) nor f(x_source))"
        ax.set_title(
            _heading("Residual-stream patching: what the target now says", table, function, extra)
        )
        ax.set_xlabel(LAYER_LABEL)
        ax.set_ylabel("mean probability (log scale)")
        fig.tight_layout()
        return fig


def probabilities(
    table: pl.DataFrame, path: str | os.PathLike, function: str | None = None
) -> Path:
    return style.save(build_probabilities(table, function), path)


def _fractions(table: pl.DataFrame, column: str) -> pl.DataFrame:
    """Share of pairs per class and layer (columns: layer, one per class)."""
    counts = (
        table.drop_nulls(column)
        .group_by("layer")
        .agg([(pl.col(column) == c).mean().alias(c) for c in OUTCOMES])
        .sort("layer")
    )
    return counts


def build_outcomes(table: pl.DataFrame, function: str | None = None) -> Figure:
    """Stacked shares of greedy answers per class and layer: the whole answer and its first token."""
    n_layers = int(_only(table, "n_layers"))
    n_pairs = table.select("replicate", "pair").unique().height
    with style.drawing():
        fig, axes = plt.subplots(2, 1, figsize=(8.0, 8.0), dpi=style.DPI, sharex=True)
        panels = (
            ("outcome", "the whole greedy answer"),
            ("first_outcome", "its first token after the patched position"),
        )
        for ax, (column, what) in zip(axes, panels, strict=True):
            shares = _fractions(table, column)
            bottom = pl.Series([0.0] * shares.height)
            for c in OUTCOMES:
                ax.bar(
                    shares["layer"],
                    shares[c],
                    bottom=bottom,
                    width=0.85,
                    color=_CLASS_COLORS[c],
                    label=_CLASS_LABELS[c],
                )
                bottom = bottom + shares[c]
            ax.set_ylim(0, 1.12)  # room for the reference strips above the bars
            ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
            ax.set_xlim(-0.6, n_layers + 0.6)
            ax.set_ylabel(f"share of pairs\n({what})")
            references = _strips(ax, n_layers)
        _depth_axis(axes[0], n_layers)
        axes[1].set_xlabel(LAYER_LABEL)
        heading = _heading(
            "Residual-stream patching: class of the patched target's greedy answer",
            table,
            function,
            f" · {n_pairs} pairs\nties go to the target's own answer, then the task, then the answer",
        )
        axes[0].set_title(heading)
        handles, _ = axes[1].get_legend_handles_labels()
        fig.legend(
            handles=[*handles, *references],
            loc="lower center",
            ncol=2,
            fontsize="small",
            frameon=False,
        )
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        return fig


def outcomes(table: pl.DataFrame, path: str | os.PathLike, function: str | None = None) -> Path:
    return style.save(build_outcomes(table, function), path)


def build_windows(windows_table: pl.DataFrame) -> Figure:
    """Per model and task, the layers where the task leads and where the answer does."""
    rows = windows_table.select("model", "task").unique().sort("model", "task")
    labels = [f"{m} · {t}" for m, t in rows.iter_rows()]
    low, high = HENDEL_2023
    first, last, of = SEED_LAYERS
    with style.drawing():
        fig, ax = plt.subplots(figsize=(8.0, 3.0 + 0.45 * len(labels)), dpi=style.DPI)
        ax.axvspan(low, high, zorder=0, **{**_HENDEL_STYLE, "alpha": 0.25})
        ax.axvspan(first / of, last / of, zorder=0, **{**_SEED_STYLE, "alpha": 0.2})
        for y, (model, task) in enumerate(rows.iter_rows()):
            mine = windows_table.filter((pl.col("model") == model) & (pl.col("task") == task))
            n_layers = int(mine["n_layers"][0])
            for column, color, shift in _LEADS:
                layers = mine.filter(column)["layer"].to_list()
                spans = [((layer - 0.5) / n_layers, 1 / n_layers) for layer in layers]
                ax.broken_barh(spans, (y + shift - 0.15, 0.3), facecolors=color)
            if not mine["task_leads"].any() and not mine["answer_leads"].any():
                ax.text(0.5, y, "neither leads at any layer", ha="center", va="center")
        ax.set_yticks(range(len(labels)), labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_xlim(-0.03, 1.03)
        ax.set_xlabel("relative depth ℓ / L of the patched layer")
        handles = [
            Patch(color=_LEADS[0][1], label="task leads: mean P(f(x_target)) above both others"),
            Patch(color=_LEADS[1][1], label="answer leads: mean P(f(x_source)) above both others"),
            *_reference_handles(),
        ]
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2 - 0.3 / len(labels)),
            fontsize="small",
            frameon=False,
        )
        fig.suptitle(
            "Residual-stream patching: where the task and where the answer transfer\n"
            "(means over the pairs whose unpatched target answers neither;\n"
            "a lead counts where it exceeds the job's numerical floor)",
            fontsize="medium",
        )
        fig.tight_layout()
        return fig


def windows(windows_table: pl.DataFrame, path: str | os.PathLike) -> Path:
    return style.save(build_windows(windows_table), path)
