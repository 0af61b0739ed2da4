"""Surprisal tables against values computed by hand.

Probabilities are powers of 1/2, so every surprisal is a whole number of bits:
replicate 1 of task t has P = 1/2, 1/4, 1/8 (1, 2, 3 bits), replicate 2 has
P = 1/4, 1/4, 1/2 (2, 2, 1 bits), and the shuffled control 1/8 everywhere
(3 bits), on a task with 8 candidate answers (a uniform code of 3 bits).
"""

from __future__ import annotations

import math

import polars as pl
import pytest

from iclprobe.surprisal import per_replicate, summary

P = {("t", 1): [1 / 2, 1 / 4, 1 / 8], ("t", 2): [1 / 4, 1 / 4, 1 / 2]}
P |= {("t_shuffled", 1): [1 / 8] * 3, ("t_shuffled", 2): [1 / 8] * 3}


def _forward(model: str = "m", scale: float = 1.0) -> pl.DataFrame:
    """Forward-stage rows in scrambled order; `scale` multiplies every log-prob."""
    rows = []
    for (task, replicate), ps in P.items():
        for example, p in enumerate(ps, start=1):
            rows.append(
                {
                    "model": model,
                    "task": task,
                    "replicate": replicate,
                    "example": example,
                    "x": example,
                    "y": 2 * example,
                    "n_answer_tokens": 2,
                    "logprob": scale * math.log(p),
                    "n_candidates": 8,
                    "control": "shuffled" if task.endswith("shuffled") else None,
                    "greedy_correct": p == 1 / 2,
                }
            )
    return pl.DataFrame(rows).reverse()


def _column(frame: pl.DataFrame, task: str, replicate: int, column: str) -> list:
    rows = frame.filter((pl.col("task") == task) & (pl.col("replicate") == replicate))
    return rows.sort("example")[column].to_list()


def test_per_replicate_bits_cumulative_bits_and_p_correct():
    table = per_replicate(_forward())
    assert _column(table, "t", 1, "surprisal_bits") == pytest.approx([1, 2, 3])
    assert _column(table, "t", 2, "surprisal_bits") == pytest.approx([2, 2, 1])
    assert _column(table, "t", 1, "surprisal_nats") == pytest.approx(
        [math.log(2), math.log(4), math.log(8)]
    )
    # I_k sums within a replicate only, in example order.
    assert _column(table, "t", 1, "cumulative_bits") == pytest.approx([1, 3, 6])
    assert _column(table, "t", 2, "cumulative_bits") == pytest.approx([2, 4, 5])
    assert _column(table, "t", 2, "p_correct") == pytest.approx([0.25, 0.25, 0.5])
    assert _column(table, "t", 1, "uniform_bits") == pytest.approx([3, 3, 3])
    assert _column(table, "t", 1, "uniform_cumulative_bits") == pytest.approx([3, 6, 9])
    assert table.height == 12


def _summary(level=0.95, forward=None):
    forward = _forward() if forward is None else forward
    return summary(per_replicate(forward), {"t": "t_shuffled"}, level=level)


def _at(frame: pl.DataFrame, task: str, example: int, column: str, model: str = "m"):
    rows = frame.filter(
        (pl.col("model") == model) & (pl.col("task") == task) & (pl.col("example") == example)
    )
    values = rows[column].unique().to_list()
    assert len(values) == 1, (column, values)
    return values[0]


def test_replicate_means_and_percentile_bands():
    table = _summary()
    # Example 1: 1 and 2 bits. With two values the linear quantile q is 1 + q.
    assert _at(table, "t", 1, "surprisal_bits_mean") == pytest.approx(1.5)
    assert _at(table, "t", 1, "surprisal_bits_lo") == pytest.approx(1.025)
    assert _at(table, "t", 1, "surprisal_bits_hi") == pytest.approx(1.975)
    # Example 3: I_3 = 6 and 5 bits.
    assert _at(table, "t", 3, "cumulative_bits_mean") == pytest.approx(5.5)
    assert _at(table, "t", 3, "cumulative_bits_lo") == pytest.approx(5.025)
    assert _at(table, "t", 1, "p_correct_mean") == pytest.approx(0.375)
    assert _at(table, "t", 1, "n_replicates") == 2
    narrow = _summary(level=0.5)
    assert _at(narrow, "t", 1, "surprisal_bits_lo") == pytest.approx(1.25)
    assert _at(narrow, "t", 1, "interval_level") == 0.5
    # Each row keeps its own replicate's values.
    assert _column(table, "t", 2, "surprisal_bits") == pytest.approx([2, 2, 1])


def test_control_join_and_bits_saved():
    """Bits saved at k = the control's mean I_k minus the task's: 3 - 1.5, 6 - 3.5, 9 - 5.5."""
    table = _summary()
    assert [_at(table, "t", k, "control_task") for k in (1, 2, 3)] == ["t_shuffled"] * 3
    assert _at(table, "t", 2, "control_surprisal_bits_mean") == pytest.approx(3.0)
    assert _at(table, "t", 3, "control_cumulative_bits_mean") == pytest.approx(9.0)
    saved = [_at(table, "t", k, "bits_saved_vs_control") for k in (1, 2, 3)]
    assert saved == pytest.approx([1.5, 2.5, 3.5])
    # The control itself has no control.
    assert _at(table, "t_shuffled", 1, "control_task") is None
    assert _at(table, "t_shuffled", 1, "bits_saved_vs_control") is None


def test_control_is_joined_within_the_same_model():
    """Model m2's log-probs are twice m's: its control's I_3 is 18 bits, not m's 9."""
    both = pl.concat([_forward("m"), _forward("m2", scale=2.0)])
    table = _summary(forward=both)
    assert table.height == 24
    assert _at(table, "t", 3, "control_cumulative_bits_mean", model="m") == pytest.approx(9.0)
    assert _at(table, "t", 3, "control_cumulative_bits_mean", model="m2") == pytest.approx(18.0)
    assert _at(table, "t", 3, "bits_saved_vs_control", model="m2") == pytest.approx(18 - 11)
