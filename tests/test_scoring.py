"""The single teacher-forced pass against one plain Hugging Face pass per prefix.

Tolerance: 1e-4 nats, float32 on CPU. The reference runs the model on exactly
the tokens before each answer token, no batching, no padding, no logits_to_keep.
"""

from __future__ import annotations

import pytest
import torch

from conftest import digit_tokenizer, make_task, number_tokenizer, tiny_gpt2, tiny_llama
from iclprobe.config import Task
from iclprobe.prompts import draw_examples, render
from iclprobe.scoring import BATCH_BOUND_NATS, score_sequences
from iclprobe.tokens import AnswerSpan, TokenizationError, encode, tokens_meeting

TOL = 1e-4
# Batching must not change a float32 result at all beyond rounding (issue: 1e-6).
BATCH_TOL = 1e-6


def _task(**overrides):
    """Long x values make replicate lengths differ, so batches need padding."""
    return make_task(**{"x_high": 300, "n_examples": 6, "replicates": 8, "seed": 1, **overrides})


def _encoded(tokenizer, task: Task, replicates=range(1, 9)):
    seqs = []
    for r in replicates:
        text, spans = render(task, *draw_examples(task, r))
        seqs.append(encode(tokenizer, text, [AnswerSpan(*span) for span in spans]))
    return seqs


@torch.no_grad()
def per_prefix_logprobs(model, seq) -> list[float]:
    """Reference: one forward pass per answer token, on the prefix before it."""
    answers = []
    for toks in seq.answer_tokens:
        total = 0.0
        for t in toks:
            prefix = torch.tensor([seq.input_ids[:t]])
            logits = model(input_ids=prefix).logits[0, -1].double()
            total += float(logits.log_softmax(-1)[seq.input_ids[t]])
        answers.append(total)
    return answers


@pytest.mark.parametrize(
    "make_tokenizer, make_model, single_token",
    [(digit_tokenizer, tiny_llama, False), (number_tokenizer, tiny_gpt2, True)],
    ids=["digits-llama", "numbers-gpt2"],
)
def test_single_pass_matches_one_pass_per_prefix(make_tokenizer, make_model, single_token):
    tokenizer = make_tokenizer()
    model = make_model(len(tokenizer))
    seqs = _encoded(tokenizer, _task(), replicates=range(1, 4))
    # With one-token numbers an answer is the number plus ")"; with digits, more.
    sizes = {len(t) for s in seqs for t in s.answer_tokens}
    assert sizes == {2} if single_token else max(sizes) >= 3
    scores = score_sequences(model, tokenizer, seqs, batch_size=3)
    for seq, seq_scores in zip(seqs, scores, strict=True):
        expected = per_prefix_logprobs(model, seq)
        got = [s.logprob for s in seq_scores]
        assert got == pytest.approx(expected, abs=TOL)


def test_batch_of_eight_equals_batch_of_one():
    tokenizer = digit_tokenizer()
    model = tiny_llama(len(tokenizer))
    # x up to 300 makes replicate lengths differ, so batching pads.
    seqs = _encoded(tokenizer, _task())
    assert len({len(s.input_ids) for s in seqs}) > 1
    one = score_sequences(model, tokenizer, seqs, batch_size=1)
    eight = score_sequences(model, tokenizer, seqs, batch_size=8)
    for a_seq, b_seq in zip(one, eight, strict=True):
        for a, b in zip(a_seq, b_seq, strict=True):
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=BATCH_TOL)
            assert a.greedy_ids == b.greedy_ids


@pytest.mark.real_model
def test_batch_size_moves_smollm2_logprobs_within_the_documented_bound(smollm2, one_thread):
    """README, Reproducibility: batch sizes agree within BATCH_BOUND_NATS; reruns exactly."""
    model, tokenizer, _ = smollm2
    seqs = _encoded(tokenizer, _task(n_examples=20))
    assert len({len(s.input_ids) for s in seqs}) > 1, "prompts of different lengths pad"
    one, eight, again = (
        [s.logprob for seq in score_sequences(model, tokenizer, seqs, batch_size=b) for s in seq]
        for b in (1, 8, 8)
    )
    assert max(abs(a - b) for a, b in zip(one, eight, strict=True)) <= BATCH_BOUND_NATS
    assert eight == again


@torch.no_grad()
def test_recorded_logits_match_a_plain_forward_pass():
    """Top-k logits, log-normaliser and greedy ids equal those of one plain HF pass.

    The reference runs the model on one unpadded sequence and reads the full
    logits at the position before each answer token (tolerance TOL).
    """
    tokenizer = digit_tokenizer()
    model = tiny_llama(len(tokenizer))
    seqs = _encoded(tokenizer, _task(), replicates=[1, 2])
    top_k = 5
    scores = score_sequences(model, tokenizer, seqs, batch_size=2, top_k=top_k)
    for seq, seq_scores in zip(seqs, scores, strict=True):
        logits = model(input_ids=torch.tensor([seq.input_ids])).logits[0].double()  # (S, V)
        for toks, s in zip(seq.answer_tokens, seq_scores, strict=True):
            for pos, t in enumerate(toks):
                row = logits[t - 1]  # (V,) the distribution over token t
                values, ids = row.topk(top_k)
                assert s.topk_ids[pos] == ids.tolist()
                assert s.topk_logits[pos] == pytest.approx(values.tolist(), abs=TOL)
                assert s.log_normalizer[pos] == pytest.approx(float(row.logsumexp(-1)), abs=TOL)
                assert s.greedy_ids[pos] == int(row.argmax())
                assert s.token_ids[pos] == seq.input_ids[t]


def test_answer_span_tokens():
    offsets = [(0, 0), (0, 1), (1, 2), (2, 4), (4, 5)]
    assert tokens_meeting(offsets, 1, 3) == [2, 3]
    assert tokens_meeting(offsets, 0, 1) == [1]  # the zero-width BOS meets nothing


def test_tokenizer_that_cannot_round_trip_is_refused():
    tokenizer = digit_tokenizer()
    # "é" is not in the vocabulary: it becomes <unk> and cannot be decoded back.
    with pytest.raises(TokenizationError, match="does not round-trip"):
        encode(tokenizer, "(1, é), (", [AnswerSpan(3, 4, 5, 6)])


@pytest.mark.real_model
def test_real_model_single_pass_matches_per_prefix(smollm2):
    model, tokenizer, _ = smollm2
    task = _task(function="x", x_high=99, n_examples=5, template="({x}, {y})")
    seqs = _encoded(tokenizer, task, replicates=[1, 2])
    scores = score_sequences(model, tokenizer, seqs, batch_size=2)
    for seq, seq_scores in zip(seqs, scores, strict=True):
        # SmolLM2 splits digits and writes the terminator as "),".
        assert [tokenizer.decode(seq.input_ids[t]) for t in seq.answer_tokens[0]][-1] == "),"
        expected = per_prefix_logprobs(model, seq)
        assert [s.logprob for s in seq_scores] == pytest.approx(expected, abs=TOL)


class _WithoutLogitsToKeep(torch.nn.Module):
    """A causal LM whose forward does not take `logits_to_keep` (older architectures)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def test_models_without_logits_to_keep_give_the_same_logprobs():
    tokenizer = digit_tokenizer()
    model = tiny_llama(len(tokenizer))
    seqs = _encoded(tokenizer, _task(), replicates=range(1, 4))
    kept = score_sequences(model, tokenizer, seqs, batch_size=3)
    full = score_sequences(_WithoutLogitsToKeep(model), tokenizer, seqs, batch_size=3)
    for a_seq, b_seq in zip(kept, full, strict=True):
        assert [a.logprob for a in a_seq] == pytest.approx([b.logprob for b in b_seq], abs=TOL)
