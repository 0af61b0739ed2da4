"""Figures of the logit lens: what each layer predicts at the decision position.

Per (model, task), from the `lens` and `lens_integers` tables:
- top tokens: a layer × rank table of the lens's top tokens, numeric tokens in
  red, for one representative example and averaged over replicates (the seed's
  `top_tokens_10_layers_in`);
- numeric mass: per layer, the probability on tokens that can start an integer
  and on the correct answer's first token, one line per example;
- integers: a layer × candidate heatmap of the distribution over candidate
  integers with markers at f(x), 2x and 4x, for the representative example,
  and averaged over replicates in units of candidate / x, so that structure
  locked to x (a peak at 2x) survives the average while peaks at fixed
  integers (round numbers) spread out (the seed's `second_harmonic`).

The representative example is replicate 1's selected example with the
largest x (the latest on ties), so that f(x), 2x and 4x lie far apart.
Each figure has a ``build_*`` function returning the open Figure.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import seaborn as sns
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure

from iclprobe.expr import parse_function
from iclprobe.plots import style

NUMERIC_COLOR = "#c0392b"
LOG10_FLOOR = -6.0  # colour floor of the integer heatmaps (probabilities below are clipped)
RATIO_BIN = 0.1  # width of the candidate / x bins of the averaged heatmap
RATIO_MAX = 5.0
MIN_X_FOR_RATIO = 10  # smaller x step candidate / x more coarsely than a bin
LAYER_LABEL = "layer (0 = embeddings, L = the model's output)"
_MARKERS = {"f(x)": "#2c7fb8", "2x": "#e66101", "4x": "#5e3c99"}
# White to a mid blue: dark enough to see, light enough for red and black text on top.
_PROB_CMAP = LinearSegmentedColormap.from_list("lens_prob", ["#ffffff", "#6baed6"])


def _ids(frame: pl.DataFrame) -> tuple[str, str]:
    if frame.height == 0:
        raise ValueError("the lens table is empty")
    model, task = frame["model"].unique().to_list(), frame["task"].unique().to_list()
    if len(model) != 1 or len(task) != 1:
        raise ValueError(f"expected one model and task, found {sorted(model)}, {sorted(task)}")
    return model[0], task[0]


_SHOWN = {" ": "␣", "\n": "⏎", "\t": "⇥"}


def _char(c: str) -> str:
    if c in _SHOWN:
        return _SHOWN[c]
    if c.isspace() or not c.isprintable():  # e.g. a no-break space: its escape, not a blank
        return c.encode("unicode_escape").decode("ascii")
    return c


def visible(text: str, width: int = 9) -> str:
    """A token's text with whitespace made visible (␣, ⏎, ⇥, \\xa0), cut to `width` characters."""
    shown = "".join(_char(c) for c in text) or "∅"
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def representative(frame: pl.DataFrame) -> dict:
    """Replicate 1 (or the first present) at its example with the largest x, latest on ties."""
    first = frame["replicate"].min()
    rows = frame.filter(pl.col("replicate") == first).select("replicate", "example", "x", "y")
    return rows.unique().sort("x", "example").row(-1, named=True)


# ---------------------------------------------------------------------------- top tokens


def _draw_token_table(ax, probs: np.ndarray, labels: np.ndarray, numeric: np.ndarray) -> None:
    """probs, labels, numeric: (L+1, k), layer 0 first; drawn with layer L at the top."""
    n_layers, k = probs.shape
    sns.heatmap(
        probs[::-1],
        annot=labels[::-1],
        fmt="",
        cmap=_PROB_CMAP,
        vmin=0.0,
        vmax=1.0,
        linewidths=0.5,
        linecolor="#dddddd",
        cbar_kws={"label": "probability", "shrink": 0.6},
        annot_kws={"fontsize": 7},
        xticklabels=list(range(1, k + 1)),
        yticklabels=list(range(n_layers - 1, -1, -1)),
        ax=ax,
    )
    for text, is_numeric in zip(ax.texts, numeric[::-1].ravel(), strict=True):
        if is_numeric:
            text.set_color(NUMERIC_COLOR)
            text.set_fontweight("bold")
    ax.tick_params(axis="y", labelsize=7, rotation=0)
    ax.set_xlabel("rank")
    ax.set_ylabel(LAYER_LABEL)


def _table_figure(rows: pl.DataFrame, k: int, heading: str, note: str) -> Figure:
    """`rows` hold k tokens per layer, in (layer, rank) order: prob, token_text, is_numeric."""
    shape = (rows.height // k, k)  # (layers, k)
    probs = rows["prob"].to_numpy().reshape(shape)
    labels = np.array([visible(t) for t in rows["token_text"]], dtype=object).reshape(shape)
    numeric = rows["is_numeric"].to_numpy().reshape(shape)
    with style.drawing():
        fig, ax = plt.subplots(figsize=(11.0, 11.0), dpi=style.DPI)
        _draw_token_table(ax, probs, labels, numeric)
        ax.set_title(heading)
        fig.text(0.5, 0.01, note, ha="center", fontsize="small", color=NUMERIC_COLOR)
        fig.tight_layout(rect=(0, 0.02, 1, 1))
        return fig


def _numeric_note(extra: str = "") -> str:
    return f"red bold: numeric tokens (digits, optional minus); ␣ a space, ⏎ a newline{extra}"


def build_top_tokens(lens: pl.DataFrame, function: str | None = None) -> Figure:
    """The lens's top tokens at every layer for the representative example."""
    model, task = _ids(lens)
    pick = representative(lens)
    rows = lens.filter(
        (pl.col("replicate") == pick["replicate"]) & (pl.col("example") == pick["example"])
    ).sort("layer", "rank")
    k = rows["rank"].max()
    first = rows["first_numeric_layer"][0]
    what = (
        f"logit lens: top {k} tokens at the decision position\nreplicate {pick['replicate']}, "
        f"example {pick['example']} (x = {pick['x']}, answer {pick['y']}); first layer with a "
        f"numeric top-1 token: {'none' if first is None else first}"
    )
    return _table_figure(rows, k, style.title(what, model, task, function), _numeric_note())


def build_top_tokens_mean(lens: pl.DataFrame, function: str | None = None) -> Figure:
    """Top tokens by their probability averaged over replicates, at the representative example."""
    model, task = _ids(lens)
    example = representative(lens)["example"]
    rows = lens.filter(pl.col("example") == example)
    n_rep = rows["replicate"].n_unique()
    k = rows["rank"].max()
    mean = (
        rows.group_by("layer", "token_id")
        .agg(
            (pl.col("prob").sum() / n_rep).alias("prob"),
            pl.col("token_text").first(),
            pl.col("is_numeric").first(),
        )
        .sort(["layer", "prob", "token_id"], descending=[False, True, False])
        .group_by("layer", maintain_order=True)
        .head(k)
    )
    if mean.height != mean["layer"].n_unique() * k:
        raise ValueError(f"fewer than {k} distinct tokens at some layer of example {example}")
    first = rows.filter((pl.col("rank") == 1) & (pl.col("layer") == 0))["first_numeric_layer"]
    found = (
        f"median {first.median():.0f} (range {first.min()}–{first.max()}; "
        f"none in {first.null_count()} of {first.len()} replicates)"
        if first.null_count() < first.len()
        else f"none in any of {first.len()} replicates"
    )
    what = (
        f"logit lens: top {k} tokens averaged over {n_rep} replicates, example {example}\n"
        f"first layer with a numeric top-1 token: {found}"
    )
    note = _numeric_note(
        f"\nmean probability over replicates, counting 0 where a token is outside a "
        f"replicate's top {k} (a lower bound)"
    )
    return _table_figure(mean, k, style.title(what, model, task, function), note)


# ---------------------------------------------------------------------------- numeric mass


def build_numeric_mass(lens: pl.DataFrame, function: str | None = None) -> Figure:
    """Per layer: P(tokens that can start an integer) and P(correct first token), per example."""
    model, task = _ids(lens)
    per_position = lens.filter(pl.col("rank") == 1).select(
        "replicate", "example", "layer", "p_integer_start", "answer_prob"
    )
    n_rep = per_position["replicate"].n_unique()
    examples = [str(e) for e in sorted(per_position["example"].unique())]
    data = per_position.with_columns(pl.col("example").cast(pl.String)).to_pandas()
    panels = {
        "p_integer_start": "P(tokens that can start an integer)",
        "answer_prob": "P(the correct answer's first token)",
    }
    with style.drawing():
        fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.0), dpi=style.DPI)
        for ax, (column, ylabel) in zip(axes, panels.items(), strict=True):
            sns.lineplot(
                data=data,
                x="layer",
                y=column,
                hue="example",
                hue_order=examples,
                palette=sns.color_palette("viridis", len(examples)),
                errorbar=style.BAND,
                ax=ax,
            )
            ax.set_ylabel(ylabel)
            ax.set_xlabel(LAYER_LABEL)
            ax.set_ylim(-0.02, 1.02)
            ax.legend(title="example i", fontsize="small", loc="upper left")
        what = (
            f"logit lens at the decision position: where numbers appear\n"
            f"mean of {n_rep} replicates ({style.BAND_TEXT})"
        )
        fig.suptitle(style.title(what, model, task, function))
        fig.tight_layout()
        return fig


# ---------------------------------------------------------------------------- integers


def _f(function: str | None, x: int, y: int) -> int:
    """f(x) from the task's function; the prompt's answer y when none is given.

    They differ in a shuffled control, where y is another example's f(x).
    """
    return y if function is None else parse_function(function)(x)


def _markers(x: int, fx: int, low: int, high: int) -> dict[str, int]:
    marks = {"f(x)": fx, "2x": 2 * x, "4x": 4 * x}
    return {name: value for name, value in marks.items() if low <= value <= high}


def _draw_markers(ax, marks: dict[str, float], to_column) -> None:
    """Dashed lines at the marked columns, labels staggered above the axes so none overlap."""
    for i, (name, value) in enumerate(marks.items()):
        column = to_column(value)
        ax.axvline(column, color=_MARKERS[name], linestyle="--", linewidth=1.2)
        ax.text(
            column, 1.005 + 0.04 * i, f"{name} = {value:g}", color=_MARKERS[name], ha="center", va="bottom",
            fontsize="small", fontweight="bold", transform=ax.get_xaxis_transform(),
        )  # fmt: skip


def _heatmap(ax, log10p: np.ndarray, extent_x: tuple[float, float], colorbar_label: str):
    """log10p (L+1, n): layer 0 at the bottom, columns spanning extent_x."""
    image = ax.imshow(
        np.clip(log10p, LOG10_FLOOR, 0.0),
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=LOG10_FLOOR,
        vmax=0.0,
        extent=(*extent_x, -0.5, log10p.shape[0] - 0.5),
        interpolation="nearest",
    )
    ax.figure.colorbar(image, ax=ax, label=colorbar_label, shrink=0.8)
    ax.grid(False)
    ax.set_ylabel(LAYER_LABEL)


def build_integers(integers: pl.DataFrame, function: str | None = None) -> Figure:
    """The distribution over candidate integers by layer, for the representative example."""
    model, task = _ids(integers)
    pick = representative(integers)
    rows = integers.filter(
        (pl.col("replicate") == pick["replicate"]) & (pl.col("example") == pick["example"])
    ).sort("layer", "candidate")
    candidates = rows["candidate"].unique().sort().to_numpy()
    low, high = int(candidates[0]), int(candidates[-1])
    log10p = rows["logprob"].to_numpy().reshape(-1, len(candidates)) / np.log(10)
    with style.drawing():
        fig, ax = plt.subplots(figsize=(11.0, 6.5), dpi=style.DPI)
        _heatmap(ax, log10p, (low - 0.5, high + 0.5), "log₁₀ P(candidate)")
        fx = _f(function, pick["x"], pick["y"])
        _draw_markers(ax, _markers(pick["x"], fx, low, high), lambda v: v)
        ax.set_xlabel(f"candidate integer ({low}…{high})")
        what = (
            f"logit lens: distribution over candidate integers by layer\nreplicate "
            f"{pick['replicate']}, example {pick['example']} (x = {pick['x']}, answer "
            f"{pick['y']}); each layer normalised over the candidates, floor 10^{LOG10_FLOOR:g}"
        )
        ax.set_title(style.title(what, model, task, function), pad=44)
        fig.tight_layout()
        return fig


def ratio_average(integers: pl.DataFrame, function: str | None = None) -> dict:
    """The candidate distributions of (replicate, example) pairs with x ≥ MIN_X_FOR_RATIO, by candidate / x.

    Returns `mass` (L+1, bins): the mean over pairs of the probability in each
    candidate / x bin; `lift` (L+1, bins): the mean over pairs and the bin's
    candidates of log₁₀ P(candidate) minus its mean over all pairs at that
    layer (what is specific to this x: peaks at fixed integers cancel);
    `edges` (bins,) left bin edges; `pairs`; `ratio` the mean f(x) / x
    (f from `function`, else the prompt's answers).
    """
    n_bins = round(RATIO_MAX / RATIO_BIN)
    n_layers = integers["layer"].n_unique()
    log10 = integers.with_columns((pl.col("logprob") / np.log(10)).alias("lp10"))
    baseline = log10.group_by("layer", "candidate").agg(pl.col("lp10").mean().alias("base"))
    rows = (
        log10.filter(pl.col("x") >= MIN_X_FOR_RATIO)
        .join(baseline, on=["layer", "candidate"], how="left")
        .with_columns(
            (pl.col("candidate") / pl.col("x") / RATIO_BIN).floor().cast(pl.Int64).alias("bin"),
            pl.col("logprob").exp().alias("p"),
            (pl.col("lp10") - pl.col("base")).alias("lift"),
        )
        .filter((pl.col("bin") >= 0) & (pl.col("bin") < n_bins))
    )
    pairs = integers.filter(pl.col("x") >= MIN_X_FOR_RATIO).select("replicate", "example", "x", "y")
    pairs = pairs.unique()
    per_bin = rows.group_by("layer", "bin").agg(pl.col("p").sum(), pl.col("lift").mean())
    mass, lift = np.zeros((n_layers, n_bins)), np.full((n_layers, n_bins), np.nan)
    at = (per_bin["layer"].to_numpy(), per_bin["bin"].to_numpy())
    mass[at] = per_bin["p"].to_numpy() / max(pairs.height, 1)
    lift[at] = per_bin["lift"].to_numpy()
    fx = [_f(function, x, y) for x, y in zip(pairs["x"], pairs["y"], strict=True)]
    ratio = float(np.mean(np.asarray(fx) / pairs["x"].to_numpy())) if pairs.height else np.nan
    edges = np.arange(n_bins) * RATIO_BIN
    return {"mass": mass, "lift": lift, "edges": edges, "pairs": pairs.height, "ratio": ratio}


def _ratio_column(value: float) -> float:
    """The centre of the candidate / x bin holding `value`."""
    return (np.floor(value / RATIO_BIN) + 0.5) * RATIO_BIN


def build_integers_mean(integers: pl.DataFrame, function: str | None = None) -> Figure:
    """The candidate distribution by layer averaged over replicates, in units of candidate / x."""
    model, task = _ids(integers)
    avg = ratio_average(integers, function)
    with np.errstate(divide="ignore"):
        log10_mass = np.log10(avg["mass"])
    marks = {"f(x)": avg["ratio"], "2x": 2.0, "4x": 4.0} if avg["pairs"] else {}
    marks = {name: round(value, 2) for name, value in marks.items()}
    with style.drawing():
        fig, (left, right) = plt.subplots(1, 2, figsize=(16.0, 6.5), dpi=style.DPI)
        _heatmap(left, log10_mass, (0.0, RATIO_MAX), "log₁₀ mean P(candidate / x in the bin)")
        left.set_title("probability per candidate / x bin", pad=44)
        image = right.imshow(
            avg["lift"], origin="lower", aspect="auto", cmap="RdBu_r", vmin=-2.0, vmax=2.0,
            extent=(0.0, RATIO_MAX, -0.5, avg["lift"].shape[0] - 0.5), interpolation="nearest",
        )  # fmt: skip
        fig.colorbar(image, ax=right, shrink=0.8, label="mean log₁₀ P / P over all pairs")
        right.grid(False)
        right.set_title(
            "specific to x: log₁₀ P(candidate) minus its mean over all pairs (fixed peaks cancel)",
            pad=44,
        )
        for ax in (left, right):
            _draw_markers(ax, marks, _ratio_column)
            ax.set_xlabel(f"candidate / x (bins of {RATIO_BIN})")
        what = (
            f"logit lens over candidate integers, averaged over replicates in units of candidate / x: "
            f"mean of {avg['pairs']} (replicate, example) pairs with x ≥ {MIN_X_FOR_RATIO}"
        )
        fig.suptitle(style.title(what, model, task, function))
        fig.tight_layout()
        return fig


# ---------------------------------------------------------------------------- all


def lens_figures(
    lens: pl.DataFrame,
    integers: pl.DataFrame | None,
    paths: dict[str, str | os.PathLike],
    function: str | None = None,
) -> list[Path]:
    """Write the figures named in `paths` (keys as in the lens rule's outputs)."""
    builders = {
        "top_tokens": lambda: build_top_tokens(lens, function),
        "top_tokens_mean": lambda: build_top_tokens_mean(lens, function),
        "numeric_mass": lambda: build_numeric_mass(lens, function),
        "integers": lambda: build_integers(integers, function),
        "integers_mean": lambda: build_integers_mean(integers, function),
    }
    unknown = set(paths) - set(builders)
    if unknown:
        raise ValueError(f"unknown lens figures {sorted(unknown)}; known: {sorted(builders)}")
    if integers is None and {"integers", "integers_mean"} & set(paths):
        raise ValueError("the integer figures need the lens_integers table")
    return [style.save(builders[name](), path) for name, path in paths.items()]
