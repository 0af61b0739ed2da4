"""The probe stage against independent computations, on every supported architecture.

- `predict` (cached context, batched forced answers, greedy decoding branched
  off the forced pass) against plain Hugging Face passes without a cache:
  log-probs within 1e-4 nats (float32), greedy tokens exactly.
- `run_probe` against the forward stage: p_correct at k for the query x_{k+1}
  equals the forward table's P(y_{k+1}) (≤ 1e-4 in log-prob), and the greedy
  answers equal `model.generate`, on tiny random models and on SmolLM2.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import polars as pl
import pytest
import torch

from conftest import TINY_CONFIGS, digit_tokenizer, make_task, number_tokenizer, tiny_model
from iclprobe.forward import run_forward
from iclprobe.probe import (
    EXTRA_TOKENS,
    answer_stop,
    decode,
    predict,
    query_rows,
    read_answer,
    run_probe,
)
from iclprobe.prompts import make_prompts
from iclprobe.tokens import AnswerTokens

TOL = 1e-4  # nats, float32
ARCHS = sorted(TINY_CONFIGS)
VOCAB = 40


# ------------------------------------------------------------------ reading answers


@pytest.mark.parametrize(
    "text, terminator, ended, value, written, kept",
    [
        (" 7),", ")", True, 7, 7, " 7)"),
        (" -12)", ")", True, -12, -12, " -12)"),
        ("  5)", ")", True, 5, 5, "  5)"),  # extra spaces are allowed
        (" 1,", ")", True, None, 1, " 1,"),  # an integer, then not the terminator
        (" 12", ")", False, None, None, " 12"),  # could still go on
        (" ", ")", False, None, None, " "),
        (" -", ")", False, None, None, " -"),
        (" )", ")", True, None, None, " )"),  # no digits
        (" x)", ")", True, None, None, " x)"),
        (" 5 ", " ]", False, None, None, " 5 "),  # part of a two-character terminator
        (" 5 ]", " ]", True, 5, 5, " 5 ]"),
        (" 5 )", " ]", True, None, 5, " 5 )"),
    ],
)
def test_read_answer(text, terminator, ended, value, written, kept):
    reading = read_answer(text, terminator)
    assert (reading.ended, reading.value, reading.written, reading.text) == (
        ended,
        value,
        written,
        kept,
    )


# ------------------------------------------------------------ predict vs plain passes


@torch.no_grad()
def _plain_greedy(model, ids: list[int], n: int) -> list[int]:
    """n greedy tokens after ids, one full pass per token (generate stops at EOS, token 0)."""
    ids = list(ids)
    for _ in range(n):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


@torch.no_grad()
def _plain_logprob(model, ids: list[int], span: list[int]) -> float:
    logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)  # (S, V)
    return sum(float(logp[t - 1, ids[t]]) for t in span)


def _cut(tokens: list[int], stop, budget: int) -> list[int]:
    """The greedy answer: tokens until stop holds or the budget is reached."""
    for n in range(1, budget + 1):
        if stop(tokens[:n]):
            return tokens[:n]
    return tokens[:budget]


@pytest.fixture(params=ARCHS)
def arch_model(request):
    return tiny_model(request.param, VOCAB)


def _never(tokens):
    return False


def _early(tokens):
    """Stops rows after 1, 2 or 3 tokens, by their first."""
    return len(tokens) >= 1 + tokens[0] % 3


@pytest.mark.parametrize(
    "shared, stop",
    [(True, _never), (True, _early), (False, _early)],
    ids=["shared-context", "shared-context-early-stop", "no-shared-token-early-stop"],
)
def test_predict_equals_plain_passes(arch_model, shared, stop):
    """Forced log-probs and greedy answers, on every path the shortcut can take.

    Each row's forced answer is chosen against the model's own greedy tokens:
    all of them (no decoding needed), the first two (decoding continues past
    the forced answer), agreeing on one then not (decoding from inside), and
    none.
    """
    model = arch_model
    budget = 4
    g = torch.Generator().manual_seed(3)
    context = torch.randint(1, VOCAB, (7,), generator=g).tolist() if shared else []
    rows = []
    for i in range(8):
        query = torch.randint(1, VOCAB, (1 + i % 3,), generator=g).tolist()
        if not shared:
            query = [1 + i] + query  # no token in common at all
        start = context + query
        greedy = _plain_greedy(model, start, budget)
        other = [(t % (VOCAB - 1)) + 1 for t in greedy]  # differs from greedy at each place
        answer = [
            greedy,
            greedy[:2],
            [greedy[0], other[1], *other[2:]],
            other[:3],
        ][i % 4]
        ids = start + answer + [5]  # a token after the answer, as in a prompt
        span = list(range(len(start), len(start) + len(answer)))
        rows.append((AnswerTokens(ids, span, span[0] - 1), greedy))

    got = predict(model, [r for r, _ in rows], stop=stop, max_new_tokens=budget, batch_size=3)
    for (row, greedy), result in zip(rows, got, strict=True):
        assert result.logprob == pytest.approx(_plain_logprob(model, row.ids, row.span), abs=TOL)
        assert result.tokens == _cut(greedy, stop, budget)
    # The shortcut (greedy read off the forced pass) and decoding were both used.
    assert {r.decoded for r in got} == {True, False}


# ------------------------------------------------------------ run_probe vs the forward stage


def _small_task(**overrides):
    return make_task(**{"x_high": 15, "n_examples": 6, "replicates": 2, **overrides})


def _against_forward(model, tokenizer, task, ks, replicates):
    prompts = make_prompts(task)
    forward = run_forward(prompts, model, tokenizer, model_name="m", task=task)
    table = run_probe(
        prompts, model, tokenizer, model_name="m", task=task, ks=ks, replicates=replicates,
        batch_size=5,
    )  # fmt: skip
    assert table.height == len(ks) * len(replicates) * len(task.xs)
    # The forward stage's example i is the probe's k = i - 1 at x = x_i.
    pairs = table.join(
        forward.select(
            "replicate",
            (pl.col("example") - 1).alias("k"),
            "x",
            pl.col("logprob").alias("forward_logprob"),
        ),
        on=["replicate", "k", "x"],
    )
    assert pairs.height == len(ks) * len(replicates)
    for logprob, p_correct, expected in pairs.select(
        "logprob", "p_correct", "forward_logprob"
    ).iter_rows():
        assert logprob == pytest.approx(expected, abs=TOL)
        assert p_correct == pytest.approx(math.exp(expected), rel=TOL)
    return prompts, table


@torch.no_grad()
def _check_against_generate(model, tokenizer, task, prompts, table, n_rows: int, seed: int = 0):
    """Greedy answers of a sample of rows equal `model.generate`'s, cut the same way."""
    stop = answer_stop(tokenizer, task.terminator)
    sample = table.sample(n=min(n_rows, table.height), seed=seed)
    for replicate, k, x, tokens, text, y_pred in sample.select(
        "replicate", "k", "x", "pred_token_ids", "pred_text", "y_pred"
    ).iter_rows():
        examples = prompts.filter(pl.col("replicate") == replicate).sort("example").head(k)
        context = task.context_text(examples["x"].to_list(), examples["y"].to_list())
        rows = query_rows(tokenizer, task, context)
        row = rows[x - task.x_low]
        budget = max(len(r.span) for r in rows) + EXTRA_TOKENS
        start = torch.tensor([row.ids[: row.boundary]])
        out = model.generate(
            start,
            attention_mask=torch.ones_like(start),
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=None,  # the tiny models' EOS is an ordinary token here
        )[0, start.shape[1] :].tolist()
        expected = _cut(out, stop, budget)
        assert tokens == expected, (replicate, k, x)
        assert read_answer(decode(tokenizer, expected), task.terminator) == read_answer(
            text, task.terminator
        )
        assert y_pred == read_answer(text, task.terminator).value


@pytest.mark.parametrize("arch", ARCHS)
def test_probe_equals_forward_stage_and_generate(arch):
    tokenizer = digit_tokenizer()
    model = tiny_model(arch, len(tokenizer))
    task = _small_task()
    prompts, table = _against_forward(model, tokenizer, task, ks=[0, 2, 5], replicates=[1, 2])
    _check_against_generate(model, tokenizer, task, prompts, table, n_rows=8)


def test_probe_with_one_token_numbers():
    """GPT-2-style tokens: " 12" is one token, so an answer is the number and ")"."""
    tokenizer = number_tokenizer()
    model = tiny_model("gpt2", len(tokenizer))
    task = _small_task(x_high=40)
    prompts, table = _against_forward(model, tokenizer, task, ks=[0, 1, 4], replicates=[2])
    _check_against_generate(model, tokenizer, task, prompts, table, n_rows=8)


def test_shuffled_control_asks_for_the_function():
    tokenizer = digit_tokenizer()
    model = tiny_model("llama", len(tokenizer))
    task = _small_task(control="shuffled", name="seed_shuffled")
    prompts = make_prompts(task)
    table = run_probe(
        prompts, model, tokenizer, model_name="m", task=task, ks=[0, 3], replicates=[1, 2]
    )
    assert table["y_true"].to_list() == task.fn.values(table["x"].to_list())
    # The context is the shuffled prompt's: its y are not f(x).
    shown = prompts.filter(pl.col("example") <= 3)
    assert (shown["y"] != task.fn.values(shown["x"].to_list())).any()
    in_context = table.filter(pl.col("x_in_context")).select("replicate", "k", "x")
    expected = shown.select("replicate", pl.lit(3).alias("k"), "x")
    assert sorted(in_context.iter_rows()) == sorted(expected.iter_rows())


def test_bad_k_is_named():
    tokenizer = digit_tokenizer()
    task = _small_task()
    with pytest.raises(ValueError, match=r"k = \[6\] outside 0…5"):
        run_probe(
            make_prompts(task), None, tokenizer, model_name="m", task=task, ks=[0, 6],
            replicates=[1],
        )  # fmt: skip


# ---------------------------------------------------------------------- the real model


@pytest.mark.real_model
def test_smollm2_probe(smollm2):
    model, tokenizer, _ = smollm2
    torch.set_num_threads(1)
    identity = make_task(name="identity", function="x", x_high=30, n_examples=6, replicates=1)
    prompts, table = _against_forward(model, tokenizer, identity, ks=[0, 5], replicates=[1])
    _check_against_generate(model, tokenizer, identity, prompts, table, n_rows=6)
    # After five examples of y = x the model answers y = x for (nearly) every query.
    after_five = table.filter(pl.col("k") == 5)
    assert (after_five["y_pred"] == after_five["x"]).mean() > 0.9
    # The shortcut covered the correct answers: nothing was decoded for them.
    assert not after_five.filter(pl.col("y_pred") == pl.col("x"))["decoded"].any()


# ---------------------------------------------------------------------- the figure


def _synthetic_table(ks=(0, 2)) -> pl.DataFrame:
    """y = 2x + 3 on 0…20: k = 0 echoes x (one wild answer, one unfinished), k = 2 is right."""
    rows = []
    for k in ks:
        for x in range(21):
            y_true = 2 * x + 3
            y_pred = x if k == 0 else y_true
            written = y_pred
            if k == 0 and x == 5:
                y_pred = written = 2023
            if k == 0 and x == 7:
                y_pred, written = None, 8
            rows.append(
                {"model": "m", "task": "t", "replicate": 1, "k": k, "x": x, "y_true": y_true,
                 "y_pred": y_pred, "y_written": written}
            )  # fmt: skip
    return pl.DataFrame(rows).with_columns(
        p_correct=pl.lit(0.5),
        residual=pl.col("y_true") - pl.col("y_pred"),
        y_pred_in_context=pl.col("y_pred") == 23,  # as if the context showed (10, 23)
    )


def test_summarize():
    from iclprobe.probe import summarize

    rows = summarize(_synthetic_table()).rows_by_key("k", named=True, unique=True)
    zero, two = rows[0], rows[2]
    assert zero["exact"] == 0 and two["exact"] == 1
    assert zero["echo"] == pytest.approx(19 / 21)  # all but the wild and the unfinished
    assert zero["unfinished"] == pytest.approx(1 / 21)
    # Of the 20 finished answers, x has the parity of 2x + 3 for odd x (8), and 2023 too.
    assert zero["same_parity"] == pytest.approx(9 / 20)
    assert two["in_context"] == pytest.approx(1 / 21)
    # Theil–Sen: one wild answer (2023 at x = 5) does not move the slope.
    assert zero["slope"] == pytest.approx(1.0) and two["slope"] == pytest.approx(2.0)


def test_probe_figure():
    from iclprobe.plots.probe import build_probe

    fig = build_probe(_synthetic_table(), function="2*x + 3")
    axes = fig.axes
    assert len(axes) == 4  # (answer, residual) × two ks
    titles = [ax.get_title() for ax in axes]
    assert "k = 0\nexact 0% · unfinished 5%" in titles
    assert "k = 2\nexact 100% · unfinished 0%" in titles
    answer_ax = next(ax for ax in axes if ax.get_title().startswith("k = 0"))
    assert answer_ax.get_ylim()[1] < 100  # the wild 2023 sits on the edge, not on a long axis
    # The reference lines: y = x and y = f(x) over the whole x range.
    lines = {tuple(line.get_ydata()[[0, -1]]) for line in answer_ax.get_lines()}
    assert {(0, 20), (3, 43)} <= lines
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("without the terminator" in t for t in legend)
    assert any("beyond the axis" in t for t in legend)
    plt.close(fig)
