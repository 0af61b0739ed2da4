"""Prompt generation: reproducible draws, no repeated x, exact answer spans."""

from __future__ import annotations

import polars as pl

from conftest import make_task
from iclprobe.io import read_table, write_table
from iclprobe.prompts import make_prompts


def test_answer_spans_cover_lead_space_y_and_terminator():
    prompts = make_prompts(make_task(function="x - 20", x_high=40))
    assert (prompts["y"] < 0).any() and (prompts["y"] > 0).any()
    for text, start, y_start, y_end, end, y in prompts.select(
        "text", "answer_start", "y_start", "y_end", "answer_end", "y"
    ).iter_rows():
        assert text[start:y_start] == " "  # the template's space before {y}
        assert text[y_start:y_end] == str(y)
        assert text[y_end:end] == ")"
        assert text[start - 1] == ","


def test_template_ending_at_y_uses_the_separator_as_terminator():
    prompts = make_prompts(make_task(template="{x} -> {y}", separator="\n", n_examples=3))
    for text, y, start, end in prompts.select(
        "text", "y", "answer_start", "answer_end"
    ).iter_rows():
        assert text.count("\n") == 3  # the last answer is terminated too
        assert text[start:end] == f" {y}\n"


def test_x_drawn_without_replacement_and_y_follows_f():
    prompts = make_prompts(make_task())
    per_rep = prompts.group_by("replicate").agg(pl.col("x").n_unique().alias("distinct"))
    assert per_rep["distinct"].to_list() == [30] * 4
    assert (prompts["y"] == 2 * prompts["x"] + 3).all()
    # Replicates are independent draws.
    orders = prompts.group_by("replicate").agg("x")["x"].to_list()
    assert len({tuple(o) for o in orders}) == 4


def test_shuffled_control_keeps_the_y_values_but_breaks_the_rule():
    rule = make_prompts(make_task())
    shuffled = make_prompts(make_task(control="shuffled"))
    assert shuffled["x"].to_list() == rule["x"].to_list()
    for r in range(1, 5):
        a = rule.filter(pl.col("replicate") == r)["y"].sort().to_list()
        b = shuffled.filter(pl.col("replicate") == r)["y"].sort().to_list()
        assert a == b
    assert (shuffled["y"] != 2 * shuffled["x"] + 3).sum() > 100


def test_prompt_files_are_byte_identical_across_runs(tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_table(make_prompts(make_task()), a, {"task": "seed"})
    write_table(make_prompts(make_task()), b, {"task": "seed"})
    assert a.read_bytes() == b.read_bytes()
    assert read_table(a).equals(make_prompts(make_task()))
    assert sorted(tmp_path.iterdir()) == [a, b]  # no temporary files left behind


def test_seed_changes_the_draw():
    assert not make_prompts(make_task(seed=1))["x"].equals(make_prompts(make_task(seed=0))["x"])
