"""Figures of the heads stage: which heads write the answer, and which ones matter.

Per (model, task), from the heads table:
- `direct`: a layer × head heatmap of the mean direct contribution to the centred logit of
  the correct first answer token, capped at ±3 as in the seed essay, one panel per example,
  with the per-layer sum over heads beside each panel;
- `causal`: the same layout for the change in P(correct answer) when one head is
  mean-ablated;
- `direct_vs_causal`: one point per head, direct contribution against causal effect, at the
  examples and replicates where both were measured; the strongest heads labelled layer.head.

Each figure has a ``build_*`` function returning the open Figure and a function of the same
name without the prefix that saves it atomically to a PNG. Heads are numbered from 0, layers
from 1 (the first block), as in the table.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
from matplotlib.colors import Normalize, SymLogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from iclprobe.plots import style

CAP = 3.0  # the seed's colour cap on direct contributions (logit units)
BELOW_FLOOR = "0.62"  # a mean effect within the numerical floor: grey, apart from pale cells
TOP = 6  # heads labelled in the scatter
LINEAR = 1e-4  # effects smaller than this (in P) are drawn on a linear scale

_DIRECT = "direct contribution to the centred logit (logit units)"
_EFFECT = "ΔP(correct answer) when the head is mean-ablated"


def _heads(table: pl.DataFrame, column: str) -> pl.DataFrame:
    rows = table.filter(pl.col("component") == "head", pl.col(column).is_not_null())
    if rows.height == 0:
        what = "mean-ablation" if column == "effect" else "head"
        raise ValueError(f"the heads table has no {what} rows with {column!r}")
    return rows


def _ids(table: pl.DataFrame) -> tuple[str, str]:
    models, tasks = table["model"].unique().to_list(), table["task"].unique().to_list()
    if len(models) != 1 or len(tasks) != 1:
        raise ValueError(f"expected one model and task, found {models} and {tasks}")
    return models[0], tasks[0]


def head_means(table: pl.DataFrame, column: str) -> pl.DataFrame:
    """Mean of `column` over replicates per (example, layer, head); for `effect`, also whether
    the mean exceeds the mean smallest change the numerical floor resolves (`resolved`)."""
    means = [pl.col(column).mean().alias("value"), pl.col("replicate").n_unique().alias("n")]
    if column == "effect":
        means.append(pl.col("effect_floor").mean())
    out = _heads(table, column).group_by("example", "layer", "head").agg(means)
    if column == "effect":
        out = out.with_columns((pl.col("value").abs() > pl.col("effect_floor")).alias("resolved"))
    return out.sort("example", "layer", "head")


def _floor_text(table: pl.DataFrame) -> str:
    floor = table["floor_nats"].max()
    return f"{floor:.1e} nats" if floor is not None else "not measured"


def layer_sums(table: pl.DataFrame, column: str) -> pl.DataFrame:
    """Per (example, layer): the sum of `column` over a layer's heads, mean over replicates."""
    return (
        _heads(table, column)
        .group_by("example", "replicate", "layer")
        .agg(pl.col(column).sum())
        .group_by("example", "layer")
        .agg(pl.col(column).mean().alias("value"))
        .sort("example", "layer")
    )


def _grid(means: pl.DataFrame, example: int) -> np.ndarray:
    """(layers, heads) array of one example's means; NaN where the floor does not resolve one."""
    rows = means.filter(pl.col("example") == example)
    n_layers, n_heads = int(rows["layer"].max()), int(rows["head"].max()) + 1
    grid = np.full((n_layers, n_heads), np.nan)
    values = rows["value"].to_numpy().copy()
    if "resolved" in rows.columns:
        values[~rows["resolved"].to_numpy()] = np.nan
    grid[rows["layer"].to_numpy() - 1, rows["head"].to_numpy()] = values
    return grid


def _build_heatmaps(
    table: pl.DataFrame, column: str, what: str, label: str, cap: float | None, function
) -> Figure:
    """One heatmap per example (cap: clip the colours at ±cap; None: a symmetric log
    colour scale up to the largest value), each with its layer sums beside it."""
    model, task = _ids(table)
    means = head_means(table, column)
    sums = layer_sums(table, column)
    examples = sorted(means["example"].unique().to_list())
    n_rep = int(means["n"].max())
    n_layers = int(means["layer"].max())
    if cap is not None:
        norm, scale = Normalize(-cap, cap), f", capped at ±{cap:g}"
    else:
        limit = max(float(means["value"].abs().max() or 0.0), 10 * LINEAR)
        norm = SymLogNorm(LINEAR, vmin=-limit, vmax=limit, base=10)
        scale = f" (symmetric log scale, linear within ±{LINEAR:g})"
    width = max(8.0, 1.2 + 2.6 * len(examples))
    with style.drawing():
        fig = plt.figure(figsize=(width, 2.4 + 0.2 * n_layers), dpi=style.DPI)
        ratios = [r for _ in examples for r in (3.0, 1.3)] + [0.25]
        grid = fig.add_gridspec(1, len(ratios), width_ratios=ratios, wspace=0.3)
        image, first_bars = None, None
        for i, example in enumerate(examples):
            heat = fig.add_subplot(grid[0, 2 * i])
            values = _grid(means, example)
            shown = values if cap is None else np.clip(values, -cap, cap)
            colours = plt.get_cmap("RdBu_r").with_extremes(bad=BELOW_FLOOR)
            image = heat.imshow(np.ma.masked_invalid(shown), cmap=colours, norm=norm, aspect="auto")
            _label_strongest(heat, values, norm)
            heat.set_xticks(range(values.shape[1]))
            heat.set_xticklabels(range(values.shape[1]), fontsize="x-small")
            ticks = list(range(0, n_layers, max(1, n_layers // 10)))
            heat.set_yticks(ticks)
            heat.set_yticklabels([t + 1 for t in ticks] if i == 0 else [], fontsize="x-small")
            heat.set_xlabel("head")
            heat.set_ylabel("layer (1 = first block)" if i == 0 else "")
            heat.set_title(f"example {example}", fontsize="small")
            heat.grid(False)
            bars = fig.add_subplot(grid[0, 2 * i + 1], sharey=heat, sharex=first_bars)
            first_bars = first_bars or bars
            per_layer = sums.filter(pl.col("example") == example).sort("layer")
            value = per_layer["value"].to_numpy()
            colours = np.where(value >= 0, "#b2182b", "#2166ac")
            bars.barh(per_layer["layer"].to_numpy() - 1, value, color=colours, height=0.8)
            bars.axvline(0, color="0.3", linewidth=0.8)
            bars.tick_params(axis="y", left=False, right=False, labelleft=False, labelright=False)
            bars.tick_params(axis="x", labelsize="x-small")
            bars.xaxis.set_major_locator(MaxNLocator(3, symmetric=True))
            bars.set_xlabel("layer sum", fontsize="small")
        colour = fig.add_subplot(grid[0, -1])
        bar = fig.colorbar(image, cax=colour)
        bar.set_label(f"{label}{scale}", fontsize="small")
        heading = style.title(what, model, task, function)
        floor = (
            f"\ngrey: |mean ΔP| within the numerical floor ({_floor_text(table)} of log P), "
            "left out of the 3 strongest"
            if column == "effect"
            else ""
        )
        fig.suptitle(
            f"{heading}\nmean over {n_rep} replicates · numbers: a panel's 3 strongest heads\n"
            f"bars: the sum over a layer's heads (uncapped){floor}",
            fontsize="medium",
        )
        fig.subplots_adjust(
            top=1 - 1.6 / fig.get_figheight(), bottom=0.6 / fig.get_figheight(), left=0.07
        )
        return fig


def _label_strongest(ax, values: np.ndarray, norm, n: int = 3) -> None:
    """Write the value of the n cells largest in magnitude on them (white on dark cells)."""
    order = np.argsort(-np.abs(np.nan_to_num(values)), axis=None)[:n]
    for layer, head in zip(*np.unravel_index(order, values.shape), strict=True):
        value = values[layer, head]
        if np.isnan(value):  # fewer than n cells above the floor
            continue
        dark = abs(float(norm(value)) - 0.5) > 0.3
        ax.text(
            head,
            layer,
            f"{value:.2g}",
            ha="center",
            va="center",
            fontsize=6,
            color="white" if dark else "black",
        )


def build_direct(table: pl.DataFrame, function: str | None = None) -> Figure:
    what = "Direct logit attribution of each head at the decision position"
    return _build_heatmaps(table, "contribution", what, _DIRECT, CAP, function)


def build_causal(table: pl.DataFrame, function: str | None = None) -> Figure:
    what = "Causal effect of mean-ablating each head at the decision position"
    return _build_heatmaps(table, "effect", what, _EFFECT, None, function)


def paired(table: pl.DataFrame) -> pl.DataFrame:
    """Per head: mean direct contribution and mean effect over the prompts that have both, and
    whether the numerical floor resolves the mean effect."""
    rows = _heads(table, "effect")
    return (
        rows.group_by("layer", "head")
        .agg(pl.col("contribution", "effect", "effect_floor").mean())
        .with_columns((pl.col("effect").abs() > pl.col("effect_floor")).alias("resolved"))
        .sort("layer", "head")
    )


def build_direct_vs_causal(table: pl.DataFrame, function: str | None = None) -> Figure:
    model, task = _ids(table)
    heads = paired(table)
    prompts = _heads(table, "effect").select("replicate", "example").unique()
    examples = ", ".join(str(e) for e in sorted(prompts["example"].unique()))
    direct, effect = heads["contribution"].to_numpy(), heads["effect"].to_numpy()
    resolved = heads["resolved"].to_numpy()
    n_resolved = int(resolved.sum())
    if n_resolved >= 3:  # ranks of effects within the floor would be noise
        d, e = direct[resolved], effect[resolved]
        rho = np.corrcoef(np.argsort(np.argsort(d)), np.argsort(np.argsort(e)))[0, 1]
        rank = f"Spearman ρ(direct, ΔP) = {rho:.2f} over the {n_resolved} heads above the floor"
    else:
        rank = f"only {n_resolved} heads above the floor: no rank correlation"
    with style.drawing():
        ax = style.new_axes()
        points = ax.scatter(
            direct[resolved],
            effect[resolved],
            c=heads["layer"].to_numpy()[resolved],
            cmap="viridis",
            vmin=1,
            vmax=int(heads["layer"].max()),
            s=18,
            alpha=0.85,
        )
        ax.scatter(
            direct[~resolved],
            effect[~resolved],
            s=18,
            facecolors="none",
            edgecolors="0.6",
            linewidths=0.8,
            label=f"|ΔP| within the numerical floor ({_floor_text(table)} of log P)",
        )
        if (~resolved).any():
            ax.legend(loc="best", fontsize="x-small")
        bar = ax.figure.colorbar(points, ax=ax)
        bar.set_label("layer (1 = first block)")
        ax.axhline(0, color="0.4", linewidth=0.8)
        ax.axvline(0, color="0.4", linewidth=0.8)
        by_effect = [i for i in np.argsort(-np.abs(effect)) if resolved[i]][:TOP]
        strongest = set(np.argsort(-np.abs(direct))[:TOP]) | set(by_effect)
        layers, numbers = heads["layer"].to_list(), heads["head"].to_list()
        for i in sorted(int(i) for i in strongest):
            name = f"{layers[i]}.{numbers[i]}"
            ax.annotate(
                name,
                (direct[i], effect[i]),
                fontsize="x-small",
                xytext=(3, 3),
                textcoords="offset points",
            )
        heading = style.title(
            "Direct contribution against causal effect, one point per head", model, task, function
        )
        ax.set_title(
            f"{heading}\nmean over {prompts.height} prompts (example {examples}); {rank}\n"
            f"labels: layer.head of the {TOP} strongest by each (by ΔP: above the floor only)",
            fontsize="small",
        )
        ax.set_yscale("symlog", linthresh=LINEAR)
        ax.margins(y=0.08)
        ax.set_xlabel(_DIRECT)
        ax.set_ylabel(f"{_EFFECT}\n(symmetric log scale, linear within ±{LINEAR:g})")
        ax.figure.tight_layout()
        return ax.figure


def direct(table: pl.DataFrame, path: str | os.PathLike, function: str | None = None) -> Path:
    """The seed's heads figure: mean direct contribution per head, capped at ±3."""
    return style.save(build_direct(table, function), path)


def causal(table: pl.DataFrame, path: str | os.PathLike, function: str | None = None) -> Path:
    return style.save(build_causal(table, function), path)


def direct_vs_causal(
    table: pl.DataFrame, path: str | os.PathLike, function: str | None = None
) -> Path:
    return style.save(build_direct_vs_causal(table, function), path)
