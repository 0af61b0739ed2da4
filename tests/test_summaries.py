"""The stage summary tables of the report, against numbers worked out by hand."""

from __future__ import annotations

import subprocess
import sys

import polars as pl

from iclprobe.summaries import heads_summary, lens_summary, patching_summary, probe_summary


def test_probe_summary_counts_exact_answers_integers_and_copies():
    probe = pl.DataFrame(
        {
            "model": "m",
            "task": "t",
            "k": [0, 0, 0, 0, 2, 2],
            "y_true": [1, 2, 3, 4, 1, 2],
            "y_pred": [1, None, 5, 5, 1, 2],
            "y_pred_in_context": [False, False, True, True, False, False],
            "p_correct": [0.5, 0.1, 0.0, 0.2, 0.9, 0.7],
        }
    )
    row = probe_summary(probe).filter(pl.col("k") == 0).row(0, named=True)
    assert row["queries"] == 4
    assert row["exact"] == 0.25  # a missing answer is not exact
    assert row["writes an integer"] == 0.75
    assert row["copies a shown y"] == 0.5
    assert abs(row["mean P(f(x))"] - 0.2) < 1e-12


def test_lens_summary_reads_the_first_numeric_and_first_answer_layers_per_position():
    # Two positions over layers 0..3: the answer ranks first from layer 2 at the first,
    # never at the second; their first numeric layers are 1 and 3.
    rows = []
    for example, first_numeric, ranks in ((1, 1, [9, 3, 1, 1]), (2, 3, [9, 9, 5, 2])):
        for layer, answer_rank in enumerate(ranks):
            for rank in (1, 2):
                rows.append(
                    {
                        "model": "m",
                        "task": "t",
                        "replicate": 1,
                        "example": example,
                        "layer": layer,
                        "rank": rank,
                        "answer_rank": answer_rank,
                        "first_numeric_layer": first_numeric,
                    }
                )
    row = lens_summary(pl.DataFrame(rows)).row(0, named=True)
    assert row["positions"] == 2 and row["layers"] == 3
    assert row["first numeric layer (median)"] == 2.0
    assert row["first numeric layer (range)"] == "1–3"
    assert row["first layer with f(x) top-1 (median)"] == 2.0
    assert row["first layer with f(x) top-1: share never"] == 0.5


def test_heads_summary_ranks_heads_by_mean_contribution_and_by_ablation_effect():
    heads = pl.DataFrame(
        {
            "model": "m",
            "task": "t",
            "layer": [1, 1, 2, 2, 1, 1, 2, 2, 2],
            "component": ["head"] * 8 + ["mlp"],
            "head": [0, 1, 0, 1, 0, 1, 0, 1, None],
            "contribution": [1.0, 3.0, 2.0, -1.0, 1.0, 1.0, 2.0, -1.0, 99.0],
            "effect": [-0.1, 0.0, -0.3, 0.05, -0.1, 0.0, -0.1, 0.05, None],
            "effect_floor": [0.01] * 8 + [None],
        }
    )
    row = heads_summary(heads, n=2).row(0, named=True)
    # Means: 1.0 = 1.0, 1.1 = 2.0, 2.0 = 2.0, 2.1 = -1.0; the MLP's 99 is not a head.
    assert row["top 2 direct (logit)"] in ("1.1 (2.0), 2.0 (2.0)", "2.0 (2.0), 1.1 (2.0)")
    # Mean effects: 1.0 = -0.1, 1.1 = 0.0 (within the floor of 0.01), 2.0 = -0.2, 2.1 = 0.05.
    assert row["top 2 ablation (ΔP)"] == "2.0 (-0.2), 1.0 (-0.1)"
    assert row["ablations above the floor"] == "3 of 4"
    # Head 2.0's effect within a floor of 0.5 (a P near 1, say) leaves the ranking.
    noisy = heads.with_columns(
        pl.when((pl.col("layer") == 2) & (pl.col("head") == 0))
        .then(0.5)
        .otherwise(pl.col("effect_floor"))
        .alias("effect_floor")
    )
    row = heads_summary(noisy, n=2).row(0, named=True)
    assert row["top 2 ablation (ΔP)"] == "1.0 (-0.1), 2.1 (0.05)"
    assert row["ablations above the floor"] == "2 of 4"


def test_patching_summary_joins_runs_of_leading_layers():
    layers = list(range(1, 7))
    windows = pl.DataFrame(
        {
            "model": "m",
            "task": "t",
            "layer": layers,
            "n_layers": 6,
            "p_task": [0.0, 0.3, 0.4, 0.1, 0.35, 0.0],
            "source_p_answer": 0.8,
            "task_leads": [False, True, True, False, True, False],
            "answer_leads": [False, False, False, False, False, True],
        }
    )
    row = patching_summary(windows).row(0, named=True)
    assert row["task leads"] == "2–3, 5"
    assert row["answer leads"] == "6"
    assert row["max mean p_task"] == 0.4 and row["at layer"] == 3


def test_the_summary_tables_do_not_load_torch():
    """The report's table jobs read Parquet only: starting torch would cost each job seconds."""
    code = "import sys, iclprobe.summaries; print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"
