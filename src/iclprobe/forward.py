"""The forward stage: score every replicate of a task's prompts with one model.

The scoring convention is `iclprobe.tokens`'s: an answer's span starts at the
whitespace before {y} and must start on a token boundary, checked once per
task and model before any pass.
"""

from __future__ import annotations

import logging

import polars as pl

from iclprobe.config import Task
from iclprobe.scoring import score_sequences
from iclprobe.tokens import AnswerSpan, EncodedSequence, TokenizationError, check_boundary, encode

log = logging.getLogger(__name__)


class ContextTooLongError(ValueError):
    """A prompt is longer than the model's context window."""


def encode_prompts(prompts: pl.DataFrame, tokenizer) -> tuple[list[int], list[EncodedSequence]]:
    """Tokenize each replicate once; returns replicate numbers and encodings."""
    per_rep = (
        prompts.sort("replicate", "example")
        .group_by("replicate", maintain_order=True)
        .agg(
            pl.col("text").first(),
            pl.concat_list("answer_start", "y_start", "y_end", "answer_end").alias("spans"),
        )
    )
    replicates, encoded = [], []
    for rep, text, spans in per_rep.iter_rows():
        encoded.append(encode(tokenizer, text, [AnswerSpan(*span) for span in spans]))
        replicates.append(rep)
    return replicates, encoded


def check_context(encoded: list[EncodedSequence], max_positions: int | None, task: str, model: str):
    longest = max(len(e.input_ids) for e in encoded)
    if max_positions is not None and longest > max_positions:
        raise ContextTooLongError(
            f"task {task!r}: the longest prompt is {longest} tokens but model {model!r} has a "
            f"context window of {max_positions}; lower n_examples or shorten the template"
        )
    return longest


def run_forward(
    prompts: pl.DataFrame,
    model,
    tokenizer,
    *,
    model_name: str,
    task: Task | None = None,
    max_positions: int | None = None,
    batch_size: int = 8,
    top_k: int = 10,
) -> pl.DataFrame:
    """Answer log-probabilities and top-k logits for every (replicate, example)."""
    if task is not None:
        check_boundary(tokenizer, task, model_name)
    task_name = prompts["task"][0]
    try:
        replicates, encoded = encode_prompts(prompts, tokenizer)
    except TokenizationError as err:
        raise TokenizationError(f"task {task_name!r}, model {model_name!r}: {err}") from None
    longest = check_context(encoded, max_positions, task_name, model_name)
    log.info("task %s: %d sequences, longest %d tokens", task_name, len(encoded), longest)
    scores = score_sequences(model, tokenizer, encoded, batch_size=batch_size, top_k=top_k)
    rows = []
    for rep, seq, seq_scores in zip(replicates, encoded, scores, strict=True):
        for example, s in enumerate(seq_scores, start=1):
            rows.append(
                {
                    "replicate": rep,
                    "example": example,
                    "decision_position": seq.decision[example - 1],
                    "n_answer_tokens": len(s.token_ids),
                    "logprob": s.logprob,
                    "answer_token_ids": s.token_ids,
                    "token_logprobs": s.token_logprobs,
                    "greedy_token_ids": s.greedy_ids,
                    "greedy_correct": s.greedy_ids == s.token_ids,
                    "greedy_text": tokenizer.decode(s.greedy_ids),
                    "topk_ids": s.topk_ids,
                    "topk_logits": s.topk_logits,
                    "log_normalizer": s.log_normalizer,
                }
            )
    scored = pl.DataFrame(rows)
    keys = prompts.select("task", "replicate", "example", "x", "y", "n_candidates", "control")
    return (
        keys.join(scored, on=["replicate", "example"], how="inner", validate="1:1")
        .with_columns(pl.lit(model_name).alias("model"))
        .select("model", pl.exclude("model"))
        .sort("replicate", "example")
    )


# Recorded in every forward table's metadata, so a reader knows what `logprob` sums.
SCORING_CONVENTION = (
    "answer span = the whitespace before {y} in the template, the characters of y, then the "
    "terminator; logprob = sum of log P(token | all tokens before it) over every token that "
    "meets the span, from one teacher-forced pass per replicate"
)
