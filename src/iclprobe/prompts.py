"""Prompt generation: reproducible draws of x and the text of each replicate.

Each replicate is one sequence `(x1, y1), (x2, y2), …, (xN, yN)` that the
forward stage scores in a single teacher-forced pass. For every example we
record the character span of its answer: the whitespace before {y} in the
template (the scoring boundary, `answer_start`), the digits of y (`y_start` to
`y_end`) and the terminator (the template text after {y}, or the separator
when {y} ends the template; to `answer_end`), so that the answer's probability
is a proper distribution over integers of both signs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl

from iclprobe.config import Task

PROMPT_SCHEMA = {
    "task": pl.String,
    "replicate": pl.Int64,
    "example": pl.Int64,
    "x": pl.Int64,
    "y": pl.Int64,
    "text": pl.String,
    "answer_start": pl.Int64,
    "answer_end": pl.Int64,
    "y_start": pl.Int64,
    "y_end": pl.Int64,
    "n_candidates": pl.Int64,
    "control": pl.String,
}


def replicate_seed(base_seed: int, task: str, replicate: int) -> int:
    """A stable seed per (task, replicate): Python's hash() is salted per process."""
    digest = hashlib.sha256(f"{base_seed}/{task}/{replicate}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def draw_examples(task: Task, replicate: int) -> tuple[list[int], list[int]]:
    """The x values (without replacement: a repeated x could be copied) and their y."""
    rng = np.random.default_rng(replicate_seed(task.seed, task.name, replicate))
    xs = rng.choice(np.arange(task.x_low, task.x_high + 1), size=task.n_examples, replace=False)
    xs = [int(x) for x in xs]
    ys = task.fn.values(xs)
    if task.control == "shuffled":
        # The same y values in another order: no rule maps x to y any more.
        ys = [ys[i] for i in rng.permutation(len(ys))]
    return xs, ys


def render(task: Task, xs: list[int], ys: list[int]) -> tuple[str, list[tuple[int, int, int, int]]]:
    """The replicate's text and, per example, (answer_start, y_start, y_end, answer_end).

    Every example, the last included, is followed by the separator and the start
    of the next example's template, so the last answer's terminator is tokenized
    exactly like the others (SmolLM2 writes "),": a bare ")" at the end of the
    text would be a rare token and inflate the last surprisal).
    """
    text = ""
    spans = []
    for x, y in zip(xs, ys, strict=True):
        start = len(text) + len(task.query_text(x))
        y_start = start + len(task.lead)
        y_end = y_start + len(str(y))
        spans.append((start, y_start, y_end, y_end + len(task.terminator)))
        text += task.example_text(x, y)
    return text + task.prefix, spans


def make_prompts(task: Task) -> pl.DataFrame:
    """One row per (replicate, example) with the replicate's full text and answer spans."""
    n_candidates = len(task.candidates())
    rows = []
    for r in range(1, task.replicates + 1):
        xs, ys = draw_examples(task, r)
        text, spans = render(task, xs, ys)
        for i, (x, y, span) in enumerate(zip(xs, ys, spans, strict=True), start=1):
            start, y_start, y_end, end = span
            rows.append(
                (
                    task.name,
                    r,
                    i,
                    x,
                    y,
                    text,
                    start,
                    end,
                    y_start,
                    y_end,
                    n_candidates,
                    task.control,
                )
            )
    return pl.DataFrame(rows, schema=PROMPT_SCHEMA, orient="row")
