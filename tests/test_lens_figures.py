"""The logit lens figures: on a tiny model's tables and on synthetic integer distributions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
import torch
from matplotlib.colors import to_hex

from conftest import digit_tokenizer, make_task, tiny_model
from iclprobe.config import LensSettings
from iclprobe.forward import run_forward
from iclprobe.lens import LensPlan, run_lens
from iclprobe.plots import lens as figures
from iclprobe.prompts import make_prompts


@pytest.fixture(scope="module")
def tables():
    """The lens tables of a tiny Llama on y = x + 2 (three replicates, examples 1, 3, 5)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tokenizer = digit_tokenizer()
    model = tiny_model("llama", len(tokenizer), seed=2)
    task = make_task(name="plus2", function="x + 2", x_low=0, x_high=30, n_examples=5, replicates=3)
    settings = LensSettings(True, (1, 3, "last"), None, 4, True, None, None)
    prompts = make_prompts(task)
    forward = run_forward(prompts, model, tokenizer, model_name="tiny", task=task)
    plan = LensPlan.for_task(settings, task)
    try:
        yield run_lens(forward, prompts, model, tokenizer, task=task, plan=plan)
    finally:
        torch.set_num_threads(threads)


def test_whitespace_is_visible_and_long_tokens_are_cut():
    assert figures.visible(" 7") == "␣7"
    assert figures.visible("\n") == "⏎"
    assert figures.visible("\xa0") == "\\xa0"
    assert figures.visible("") == "∅"
    assert figures.visible("abcdefghijkl", width=5) == "abcd…"


def test_representative_is_replicate_one_at_its_largest_x(tables):
    lens, _ = tables
    pick = figures.representative(lens)
    rep1 = lens.filter(pl.col("replicate") == 1)
    assert pick["replicate"] == 1
    assert pick["x"] == rep1["x"].max()
    assert pick["y"] == pick["x"] + 2


def test_top_token_table_marks_exactly_the_numeric_tokens(tables):
    lens, _ = tables
    fig = figures.build_top_tokens(lens, function="x + 2")
    try:
        red = [t for t in fig.axes[0].texts if to_hex(t.get_color()) == figures.NUMERIC_COLOR]
        pick = figures.representative(lens)
        shown = lens.filter(
            (pl.col("replicate") == pick["replicate"]) & (pl.col("example") == pick["example"])
        )
        assert len(red) == shown["is_numeric"].sum()
        assert len(fig.axes[0].texts) == shown.height
    finally:
        plt.close(fig)


def test_every_figure_is_written(tables, tmp_path):
    lens, integers = tables
    names = ["top_tokens", "top_tokens_mean", "numeric_mass", "integers", "integers_mean"]
    paths = {name: tmp_path / f"{name}.png" for name in names}
    written = figures.lens_figures(lens, integers, paths, function="x + 2")
    assert [p.name for p in written] == [f"{n}.png" for n in names]
    assert all(p.stat().st_size > 10_000 for p in written)  # drawn, not blank
    with pytest.raises(ValueError, match="need the lens_integers table"):
        figures.lens_figures(lens, None, {"integers": tmp_path / "x.png"})


def _synthetic(layer_peaks) -> pl.DataFrame:
    """Two pairs (x = 10, 20) on candidates 0…99; per layer a peak at peak(x), floor elsewhere."""
    rows = []
    for replicate, x in ((1, 10), (2, 20)):
        for layer, peak in enumerate(layer_peaks):
            p = np.full(100, 1e-6)
            p[peak(x)] = 1.0
            p /= p.sum()
            for c in range(100):
                rows.append((replicate, 1, x, x, layer, c, float(np.log(p[c]))))
    columns = ["replicate", "example", "x", "y", "layer", "candidate", "logprob"]
    return pl.DataFrame(rows, schema=columns, orient="row")


def test_ratio_average_keeps_peaks_locked_to_x_and_cancels_fixed_ones():
    # Layer 0 peaks at 2x (20 and 40); layer 1 at the fixed integer 30 (ratios 3.0 and 1.5).
    avg = figures.ratio_average(_synthetic([lambda x: 2 * x, lambda x: 30]))
    col = {r: int(r / figures.RATIO_BIN) for r in (1.5, 2.0, 3.0)}
    assert avg["pairs"] == 2 and avg["ratio"] == pytest.approx(1.0)
    assert avg["mass"][0, col[2.0]] == pytest.approx(1.0, abs=1e-3)
    assert avg["mass"][1, col[3.0]] == pytest.approx(0.5, abs=1e-3)
    assert avg["mass"][1, col[1.5]] == pytest.approx(0.5, abs=1e-3)
    # The 2x peak is specific to each x: its lift is large. The fixed peak is not.
    assert avg["lift"][0, col[2.0]] > 1.0
    assert avg["lift"][1, col[3.0]] < avg["lift"][0, col[2.0]] / 2


def test_top_token_tables_say_when_no_layer_is_numeric(tables):
    lens, _ = tables
    plain = lens.with_columns(
        pl.lit(False).alias("is_numeric"), pl.lit(None, dtype=pl.Int64).alias("first_numeric_layer")
    )
    for build in (figures.build_top_tokens, figures.build_top_tokens_mean):
        fig = build(plain)
        try:
            heading = fig.axes[0].get_title()
            assert "numeric top-1 token: none" in heading
            assert not [
                t for t in fig.axes[0].texts if to_hex(t.get_color()) == figures.NUMERIC_COLOR
            ]
        finally:
            plt.close(fig)
