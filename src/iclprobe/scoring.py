"""Answer log-probabilities from one teacher-forced forward pass per sequence.

A causal LM gives the next-token distribution at every prefix at once, so
scoring all N answers of a replicate takes one pass, not N. An answer's
log-probability is the sum over every token whose character span meets the
answer span (the whitespace before y, its digits and the terminator; see
`iclprobe.tokens`) of log P(token | all before it).
This is exact for any tokenizer: digit-per-token (SmolLM2, Llama-2) or
one-token numbers (GPT-2, Llama-3).

Sequences are batched with right padding: a causal model's real tokens never
attend to the pads after them, and their position ids stay 0..L-1, so padding
changes no result beyond rounding. Rounding does change: the CPU matrix kernels
block their sums by the batch's shape, so the batch size moves float32
log-probs by up to `BATCH_BOUND_NATS` (tests/test_scoring.py checks it on
SmolLM2 with prompts of different lengths). The same batch size gives the
same bits on every run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from iclprobe.tokens import EncodedSequence

log = logging.getLogger(__name__)

# How far `forward.batch_size` may move a float32 log-prob on CPU, in nats. Measured
# on SmolLM2 (one thread, batch 8 against 1): up to 2.7e-5 nats on the seed task.
BATCH_BOUND_NATS = 1e-4


@dataclass
class AnswerScore:
    """Everything recorded about one answer, position by position."""

    token_ids: list[int]
    token_logprobs: list[float]
    greedy_ids: list[int]
    topk_ids: list[list[int]]
    topk_logits: list[list[float]]
    log_normalizer: list[float]

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))


def _logits_at(model, ids, mask, positions: list[int]) -> torch.Tensor:
    """Logits at `positions` only (the unembedding of a 49k vocabulary is costly).

    No KV cache is built: nothing decodes after this pass. Architectures
    without `logits_to_keep` get the full logits, then indexed.
    """
    try:
        # On the CPU: a model split over GPUs slices its last hidden states on its last
        # device, and a CPU index serves every device.
        keep = torch.tensor(positions)
        return model(
            input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False
        ).logits
    except TypeError:
        return model(input_ids=ids, attention_mask=mask).logits[:, positions]


# inference_mode: no autograd bookkeeping at all (no_grad still tracks versions).
# Neither it nor use_cache=False moved SmolLM2's CPU speed beyond noise (±5 %,
# benchmarks/forward_limit.py); not building the cache saves its memory
# (2 · layers · tokens · kv_heads · head_dim floats: ~90 MB for 8 × 236 tokens).
@torch.inference_mode()
def score_batch(model, batch: list[EncodedSequence], pad_id: int, top_k: int):
    """One forward pass over right-padded sequences; returns AnswerScores per sequence."""
    device = next(model.parameters()).device
    length = max(len(s.input_ids) for s in batch)
    ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq.input_ids)] = torch.tensor(seq.input_ids)
        mask[row, : len(seq.input_ids)] = 1
    # Logits are only needed at the positions that predict answer tokens.
    keep = sorted({t - 1 for seq in batch for toks in seq.answer_tokens for t in toks})
    column = {pos: col for col, pos in enumerate(keep)}
    logits = _logits_at(model, ids.to(device), mask.to(device), keep).float()
    log_norm = torch.logsumexp(logits, dim=-1)
    top_vals, top_ids = logits.topk(top_k, dim=-1)
    greedy = logits.argmax(dim=-1)
    results = []
    for row, seq in enumerate(batch):
        scores = []
        for toks in seq.answer_tokens:
            cols = [column[t - 1] for t in toks]
            target = [seq.input_ids[t] for t in toks]
            picked = logits[row, cols, target] - log_norm[row, cols]
            scores.append(
                AnswerScore(
                    token_ids=target,
                    token_logprobs=picked.tolist(),
                    greedy_ids=greedy[row, cols].tolist(),
                    topk_ids=top_ids[row, cols].tolist(),
                    topk_logits=top_vals[row, cols].tolist(),
                    log_normalizer=log_norm[row, cols].tolist(),
                )
            )
        results.append(scores)
    return results


def score_sequences(
    model, tokenizer, encoded: list[EncodedSequence], batch_size: int = 8, top_k: int = 10
) -> list[list[AnswerScore]]:
    """Score every sequence in batches, logging progress for long jobs."""
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    results: list[list[AnswerScore]] = []
    started = time.monotonic()
    n_tokens = 0
    for first in range(0, len(encoded), batch_size):
        batch = encoded[first : first + batch_size]
        results.extend(score_batch(model, batch, pad_id, top_k))
        n_tokens += sum(len(s.input_ids) for s in batch)
        elapsed = time.monotonic() - started
        log.info(
            "scored %d/%d sequences (%d tokens, %.1f s, %.0f tokens/s)",
            len(results),
            len(encoded),
            n_tokens,
            elapsed,
            n_tokens / max(elapsed, 1e-9),
        )
    return results
