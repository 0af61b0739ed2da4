"""The probe stage: the function a model infers from its first k examples.

For each replicate and each k, the context is the replicate's first k
examples; the query x then runs over the task's whole x range. Per
(replicate, k, x) the table holds what the model writes greedily after the
query (`pred_text`, read as the integer `y_pred`) and the probability of the
true answer `p_correct`, scored as the forward stage scores answers (the
span from the whitespace before {y} through the terminator; see
`iclprobe.tokens`). `y_true` is f(x) of the task's function, also for the
shuffled control, whose context pairs x with permuted y values.

How it is computed: the queries of one (replicate, k) share the context, so
its KV cache is computed once (on the longest common token prefix of the
tokenized queries) and the queries run over it in batches, each teacher-forced
through its true answer. That one pass gives `p_correct` and the greedy token
at every answer position: where every one is the forced token, the greedy
answer *is* y_true and nothing is decoded. Otherwise greedy decoding branches
off the forced pass at the first token where they part (the pass's cache is
reused, the query is not run again) and stops at the terminator, at a
character no integer has, or after a few tokens.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from iclprobe.config import Task
from iclprobe.prefix import encode_prefix, greedy_from, run_suffixes, suffix_logprobs
from iclprobe.tokens import AnswerTokens, encode_answer

log = logging.getLogger(__name__)

# Tokens the model may write beyond the longest true answer before its answer
# counts as unfinished (null): room for one or two more digits than any y.
EXTRA_TOKENS = 2

# Recorded in every probe table's metadata.
PROBE_CONVENTION = (
    "context = the replicate's first k examples; query x over the task's whole x range; "
    "y_true = f(x) of the task's function (also for a shuffled control); p_correct = P(y_true) "
    "over the span from the whitespace before {y} through the terminator; y_pred = the integer "
    "the model writes greedily before the terminator (leading spaces allowed), null otherwise; "
    "residual = y_true - y_pred"
)


@dataclass(frozen=True)
class Reading:
    """An answer read off generated text.

    ended: nothing more can change the reading; written: the integer the text
    starts with (after spaces), whatever follows it; value: `written` when the
    terminator follows it, else None; text: what was read, through the
    terminator when there is one.
    """

    ended: bool
    value: int | None
    written: int | None
    text: str


def read_answer(text: str, terminator: str) -> Reading:
    """Read greedy output `text` (from the scoring boundary) as an integer answer.

    Accepted: spaces, an optional minus sign, digits, then the terminator. Any
    other character ends the answer with no value (" 1," after "(0," reads as
    written = 1, value = None: the model is continuing a list). Text that could
    still become an answer (digits so far, or part of the terminator) is not
    ended.
    """
    start = len(text) - len(text.lstrip(" \t"))
    end = start + (text[start : start + 1] == "-")
    while end < len(text) and text[end].isdigit():
        end += 1
    rest = text[end:]
    if not rest or (len(rest) < len(terminator) and terminator.startswith(rest)):
        return Reading(False, None, None, text)
    written = int(text[start:end]) if text[start:end].lstrip("-") else None
    if written is not None and rest.startswith(terminator):
        return Reading(True, written, written, text[: end + len(terminator)])
    return Reading(True, None, written, text)


def shared_prefix_length(rows: list[AnswerTokens]) -> int:
    """Longest common token prefix of the rows' contexts (never past a row's boundary)."""
    limit = min(r.boundary for r in rows)
    first = rows[0].ids
    for n in range(limit):
        if any(r.ids[n] != first[n] for r in rows):
            return n
    return limit


def prefix_groups(rows: list[AnswerTokens]) -> list[list[int]]:
    """Row indices that share a cacheable prefix: all of them, unless they share no token.

    With no BOS and a template that starts with {x}, the k = 0 queries share
    nothing; they are grouped by their first token instead.
    """
    if shared_prefix_length(rows) > 0:
        return [list(range(len(rows)))]
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.ids[0], []).append(i)
    return list(groups.values())


@dataclass
class Prediction:
    """One query's result: log P(true answer) and the greedy answer's tokens."""

    logprob: float
    tokens: list[int]
    decoded: bool  # whether tokens past the forced pass had to be decoded


@dataclass
class Counter:
    """Tokens run through the model: prefixes, forced suffixes, decoding steps."""

    prefix: int = 0
    suffix: int = 0
    decode: int = 0

    @property
    def total(self) -> int:
        return self.prefix + self.suffix + self.decode


@torch.inference_mode()
def predict(
    model,
    rows: list[AnswerTokens],
    *,
    stop,
    max_new_tokens: int,
    batch_size: int,
    pad_id: int = 0,
    counter: Counter | None = None,
) -> list[Prediction]:
    """Teacher-forced log-probs and greedy answers of rows that share a context.

    Each row's forced answer is its `span` tokens; the greedy answer starts at
    the same boundary and ends when `stop(tokens)` holds or after
    `max_new_tokens` tokens. Rows are run in batches over one cached prefix
    per prefix group.
    """
    counter = counter if counter is not None else Counter()
    results: list[Prediction | None] = [None] * len(rows)
    for group in prefix_groups(rows):
        length = shared_prefix_length([rows[i] for i in group])
        prefix = encode_prefix(model, rows[group[0]].ids[:length])
        counter.prefix += length
        for first in range(0, len(group), batch_size):
            batch = group[first : first + batch_size]
            chunk = [rows[i] for i in batch]
            found = _batch(model, prefix, chunk, stop, max_new_tokens, pad_id, counter)
            for i, result in zip(batch, found, strict=True):
                results[i] = result
    return results


def _batch(model, prefix, rows, stop, max_new_tokens, pad_id, counter) -> list[Prediction]:
    """One forced pass over a batch of rows, then greedy decoding where it is needed."""
    start = prefix.length
    answers = [r.ids[start : r.span[-1] + 1] for r in rows]
    # The last answer token predicts nothing that is needed, so it is not run
    # (at least one token is, when the prefix reaches the boundary).
    suffixes = [a[: max(len(a) - 1, 1)] for a in answers]
    run = run_suffixes(model, prefix, suffixes, pad_id=pad_id)
    counter.suffix += sum(len(s) for s in suffixes)
    logprobs = suffix_logprobs(prefix, run, answers, [r.boundary - start for r in rows])
    argmax = run.logits.argmax(-1).tolist()  # (B, S)
    prefix_argmax = int(prefix.last_logits.argmax())

    predictions, branch = [], []
    for row, (r, values) in enumerate(zip(rows, logprobs, strict=True)):
        # Walk the greedy path along the forced answer while the two agree.
        tokens, ended = [], False
        for t, forced in zip(r.span, r.answer_ids, strict=True):
            tokens.append(prefix_argmax if t - 1 < start else argmax[row][t - 1 - start])
            ended = len(tokens) >= max_new_tokens or stop(tokens)
            if ended or tokens[-1] != forced:
                break
        if not ended:
            # Decode on from the last token walked, at its own position: where the
            # path left the answer, or after the answer's last token.
            branch.append((row, r.span[len(tokens) - 1] - start, tokens))
        predictions.append(Prediction(float(sum(values)), tokens, False))

    if branch:
        rows_b, cut, given = (list(v) for v in zip(*branch, strict=True))
        decoded = greedy_from(model, prefix, run, rows_b, cut, given, max_new_tokens, stop)
        # Tokens decoded (a row leaves the batch soon after it stops, so about what ran).
        counter.decode += sum(len(t) - len(g) for t, g in zip(decoded, given, strict=True))
        for row, tokens in zip(rows_b, decoded, strict=True):
            predictions[row] = Prediction(predictions[row].logprob, tokens, True)
    return predictions


def answer_stop(tokenizer, terminator: str):
    """stop(tokens): the tokens' text is a finished answer (see `read_answer`)."""

    def stop(tokens: list[int]) -> bool:
        return read_answer(decode(tokenizer, tokens), terminator).ended

    return stop


def decode(tokenizer, tokens: list[int]) -> str:
    return tokenizer.decode(tokens, clean_up_tokenization_spaces=False)


def context_examples(prompts: pl.DataFrame, replicate: int) -> tuple[list[int], list[int]]:
    """The replicate's (xs, ys) in example order, from the prompts table."""
    rows = prompts.filter(pl.col("replicate") == replicate).sort("example")
    if rows.height == 0:
        raise ValueError(f"the prompts table has no replicate {replicate}")
    return rows["x"].to_list(), rows["y"].to_list()


def query_rows(tokenizer, task: Task, context: str) -> list[AnswerTokens]:
    """The context text, then one row per query x over the whole range with answer f(x)."""
    answers = task.fn.values(task.xs)
    return [
        encode_answer(tokenizer, context + task.query_text(x), task, y)
        for x, y in zip(task.xs, answers, strict=True)
    ]


def run_probe(
    prompts: pl.DataFrame,
    model,
    tokenizer,
    *,
    model_name: str,
    task: Task,
    ks: list[int],
    replicates: list[int],
    batch_size: int = 64,
    counter: Counter | None = None,
) -> pl.DataFrame:
    """The probe table of one model and task: one row per (replicate, k, x).

    `counter`, when given, adds up the tokens run through the model.
    """
    bad = [k for k in ks if not 0 <= k < task.n_examples]
    if bad:
        raise ValueError(f"task {task.name!r}: k = {bad} outside 0…{task.n_examples - 1}")
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    stop = answer_stop(tokenizer, task.terminator)
    counter = counter if counter is not None else Counter()
    records = []
    # Replicates share their k = 0 context (none): it runs once.
    by_context: dict[str, list[Prediction]] = {}
    started = time.monotonic()
    for n, replicate in enumerate(replicates, start=1):
        xs, ys = context_examples(prompts, replicate)
        for k in ks:
            context = task.context_text(xs[:k], ys[:k])
            if context not in by_context:
                rows = query_rows(tokenizer, task, context)
                by_context[context] = predict(
                    model,
                    rows,
                    stop=stop,
                    max_new_tokens=max(len(r.span) for r in rows) + EXTRA_TOKENS,
                    batch_size=batch_size,
                    pad_id=pad_id,
                    counter=counter,
                )
            predictions = by_context[context]
            for x, p in zip(task.xs, predictions, strict=True):
                reading = read_answer(decode(tokenizer, p.tokens), task.terminator)
                records.append(
                    {
                        "replicate": replicate,
                        "k": k,
                        "x": x,
                        "y_pred": reading.value,
                        "y_written": reading.written,
                        "pred_text": reading.text,
                        "pred_token_ids": p.tokens,
                        "logprob": p.logprob,
                        "decoded": p.decoded,
                    }
                )
            elapsed = time.monotonic() - started
            log.info(
                "replicate %d/%d, k = %d: %d queries; %d tokens run so far, %.1f s, %.0f tokens/s",
                n,
                len(replicates),
                k,
                len(predictions),
                counter.total,
                elapsed,
                counter.total / max(elapsed, 1e-9),
            )
    return _finish(pl.DataFrame(records, schema=PROBE_SCHEMA), prompts, model_name, task)


def _finish(table: pl.DataFrame, prompts: pl.DataFrame, model_name: str, task: Task):
    """Add y_true = f(x), the residual, p_correct, and what the context showed.

    x_in_context: the query x is one of the k context examples' x;
    y_pred_in_context: the answer is one of their y (copied, or computed alike).
    """
    truth = pl.DataFrame(
        {"x": list(task.xs), "y_true": task.fn.values(task.xs)},
        schema={"x": pl.Int64, "y_true": pl.Int64},
    )
    # The first example that shows each x, and each y, per replicate.
    shown_x = prompts.group_by("replicate", "x").agg(pl.col("example").min().alias("x_shown"))
    shown_y = prompts.group_by("replicate", pl.col("y").alias("y_pred")).agg(
        pl.col("example").min().alias("y_shown")
    )
    return (
        table.join(truth, on="x", how="left", validate="m:1")
        .join(shown_x, on=["replicate", "x"], how="left", validate="m:1")
        .join(shown_y, on=["replicate", "y_pred"], how="left", validate="m:1")
        .with_columns(
            pl.lit(model_name).alias("model"),
            pl.lit(task.name).alias("task"),
            pl.col("logprob").exp().alias("p_correct"),
            (pl.col("y_true") - pl.col("y_pred")).alias("residual"),
            (pl.col("x_shown") <= pl.col("k")).fill_null(False).alias("x_in_context"),
            (pl.col("y_shown") <= pl.col("k")).fill_null(False).alias("y_pred_in_context"),
        )
        .select(COLUMNS)
        .sort("replicate", "k", "x")
    )


PROBE_SCHEMA = {
    "replicate": pl.Int64,
    "k": pl.Int64,
    "x": pl.Int64,
    "y_pred": pl.Int64,
    "y_written": pl.Int64,
    "pred_text": pl.String,
    "pred_token_ids": pl.List(pl.Int64),
    "logprob": pl.Float64,
    "decoded": pl.Boolean,
}
COLUMNS = [
    "model",
    "task",
    "replicate",
    "k",
    "x",
    "y_true",
    "y_pred",
    "pred_text",
    "p_correct",
    "residual",
    "logprob",
    "y_written",
    "x_in_context",
    "y_pred_in_context",
    "decoded",
    "pred_token_ids",
]


def summarize(table: pl.DataFrame) -> pl.DataFrame:
    """Per (model, task, k): how the answers relate to x, to f(x) and to the context.

    exact: y_pred = f(x); echo: y_pred = x; same_parity: of the finished
    answers, those with f(x)'s parity; in_context: y_pred is one of the
    context's y; unfinished: no terminated integer; slope: the Theil–Sen slope
    of y_pred on x (the median of the slopes between pairs of answers, which a
    few wild answers do not move); mean_p_correct: mean P(f(x)).
    """
    keys = ["model", "task", "k"]
    answered = pl.col("y_pred").is_not_null()
    counts = table.group_by(keys).agg(
        (pl.col("y_pred") == pl.col("y_true")).fill_null(False).mean().alias("exact"),
        (pl.col("y_pred") == pl.col("x")).fill_null(False).mean().alias("echo"),
        ((pl.col("residual") % 2) == 0).mean().alias("same_parity"),  # of finished answers
        pl.col("y_pred_in_context").mean().alias("in_context"),
        (~answered).mean().alias("unfinished"),
        pl.col("p_correct").mean().alias("mean_p_correct"),
    )
    slopes = [
        {**dict(zip(keys, key, strict=True)), "slope": _theil_sen(group)}
        for key, group in table.filter(answered).group_by(keys)
    ]
    slope = pl.DataFrame(slopes, schema={**table.select(keys).schema, "slope": pl.Float64})
    return counts.join(slope, on=keys, how="left").sort(keys)


def _theil_sen(group: pl.DataFrame) -> float | None:
    x = group["x"].to_numpy().astype(float)
    y = group["y_pred"].to_numpy().astype(float)
    i, j = np.triu_indices(len(x), k=1)
    apart = x[i] != x[j]
    if not apart.any():
        return None
    return float(np.median((y[j] - y[i])[apart] / (x[j] - x[i])[apart]))
