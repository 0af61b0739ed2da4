"""The scoring convention: the answer span starts at the whitespace before {y}.

With it, one context's probabilities over *all* candidate answers, of both
signs, form one distribution: they sum to at most 1. Before it, SmolLM2 scored
a positive answer after the space token and a negative one including its
"␠-" token, and the sum could exceed 1. The reference log-probs here locate
the answer tokens independently of `iclprobe.tokens`: by tokenizing the
context alone and the whole text, and running one plain pass per prefix.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import digit_tokenizer, make_task, number_tokenizer, tiny_gpt2, tiny_llama
from iclprobe.scoring import score_sequences
from iclprobe.tokens import AnswerSpan, TokenizationError, check_boundary, encode

TOL = 1e-4  # nats, float32 on CPU
MIXED = {"function": "x - 20", "x_high": 40, "n_examples": 4}  # answers -20 … 20


def _context(task) -> str:
    """Three examples, then the query x = 7 up to the scoring boundary."""
    return "".join(task.example_text(x, task.fn(x)) for x in (3, 31, 12)) + task.query_text(7)


def _candidate_texts(task):
    """(text, span) of the context followed by each candidate answer."""
    context = _context(task)
    out = []
    for y in task.candidates():
        answer, y_start, end = task.continuation(y)
        b = len(context)
        out.append(
            (context + answer, AnswerSpan(b, b + y_start, b + y_start + len(str(y)), b + end))
        )
    return out


@torch.no_grad()
def reference_logprob(model, tokenizer, text: str, span: AnswerSpan) -> float:
    """log P(answer | context) from one plain HF pass per answer token.

    The context is tokenized alone; the answer's tokens are those of the whole
    text after it, up to the first token that reaches the span's end.
    """
    context_ids = tokenizer(text[: span.boundary])["input_ids"]
    full = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = full["input_ids"], full["offset_mapping"]
    assert ids[: len(context_ids)] == context_ids, "the boundary splits a token"
    total = 0.0
    for t in range(len(context_ids), len(ids)):
        logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
        total += float(logits.log_softmax(-1)[ids[t]])
        if offsets[t][1] >= span.end:
            break
    return total


def _check_candidates(model, tokenizer, task):
    texts = _candidate_texts(task)
    seqs = [encode(tokenizer, text, [span]) for text, span in texts]
    scores = score_sequences(model, tokenizer, seqs, batch_size=16)
    logprobs = [s[0].logprob for s in scores]
    total = sum(math.exp(lp) for lp in logprobs)
    assert total <= 1 + 1e-6, total
    for (text, span), got in zip(texts, logprobs, strict=True):
        assert got == pytest.approx(reference_logprob(model, tokenizer, text, span), abs=TOL)
    return total, logprobs


@pytest.mark.parametrize(
    "make_tokenizer, make_model",
    [(digit_tokenizer, tiny_llama), (number_tokenizer, tiny_gpt2)],
    ids=["digits-llama", "numbers-gpt2"],
)
def test_all_candidates_form_one_distribution_tiny(make_tokenizer, make_model):
    tokenizer = make_tokenizer()
    _check_candidates(make_model(len(tokenizer)), tokenizer, make_task(**MIXED))


@pytest.mark.real_model
def test_all_candidates_form_one_distribution_smollm2(smollm2):
    model, tokenizer, _ = smollm2
    task = make_task(**MIXED)
    total, logprobs = _check_candidates(model, tokenizer, task)
    # Both signs get real mass: the space before "-" is no longer dropped.
    candidates = task.candidates()
    negative = sum(math.exp(lp) for y, lp in zip(candidates, logprobs, strict=True) if y < 0)
    assert 0.01 < negative < total


def test_negative_answers_include_the_space_token():
    """SmolLM2-like tokens: " -" joins space and sign; a positive answer has a bare " "."""
    tokenizer = number_tokenizer()
    task = make_task(**MIXED)
    for text, span in _candidate_texts(task)[:1] + _candidate_texts(task)[-1:]:
        seq = encode(tokenizer, text, [span])
        first = seq.answer_tokens[0][0]
        assert seq.offsets[first][0] == span.boundary
        # The decision position is the token before the first one holding a character of y.
        _, end_of_first_y_token = seq.offsets[seq.decision[0] + 1]
        assert end_of_first_y_token > span.y_start


def test_template_without_space_before_y_is_refused_when_a_token_straddles():
    """`({x},{y})` with a tokenizer that writes ",-" as one token cannot be scored."""
    from conftest import _fast_tokenizer

    tokenizer = _fast_tokenizer([str(d) for d in range(10)] + [",-", *"(),- "], r",-|\d|\D")
    task = make_task(**MIXED, template="({x},{y})")
    with pytest.raises(TokenizationError, match=r"task 'seed': with template '\(\{x\},\{y\}\)'"):
        check_boundary(tokenizer, task)
    # The message names the token and the fix.
    with pytest.raises(TokenizationError, match=r"writes ',-' as one token .* put a space"):
        check_boundary(tokenizer, task)
    check_boundary(tokenizer, make_task(**MIXED))  # the seed's template is fine
    check_boundary(tokenizer, make_task(template="({x},{y})"))  # no negative answers: fine


@pytest.mark.parametrize("make_tokenizer", [digit_tokenizer, number_tokenizer])
def test_encode_answer_matches_the_prompt_tokenization(make_tokenizer):
    """A context + one answer tokenizes like the same example inside a full prompt."""
    from iclprobe.prompts import draw_examples, render
    from iclprobe.tokens import encode_answer

    tokenizer = make_tokenizer()
    task = make_task(**MIXED)
    xs, ys = draw_examples(task, 1)
    text, spans = render(task, xs, ys)
    seq = encode(tokenizer, text, [AnswerSpan(*s) for s in spans])
    for i in (0, 2, 3):
        context = task.context_text(xs[:i], ys[:i]) + task.query_text(xs[i])
        got = encode_answer(tokenizer, context, task, ys[i])
        assert got.ids[: got.span[-1] + 1] == seq.input_ids[: seq.answer_tokens[i][-1] + 1]
        assert got.span == seq.answer_tokens[i] and got.decision == seq.decision[i]
