"""Activation patching against plain Hugging Face passes with a single hook.

On a tiny random model of every supported architecture (digit-per-token and
number-per-token tokenizers) and on SmolLM2 (`-m real_model`):
- patching a prompt with its own activations changes nothing (probabilities
  within 1e-5; log-probs within 1e-5, 5e-5 on SmolLM2: see `_logprob_tol`);
- patching the last layer gives the source's next-token distribution at its
  decision position (logits within 1e-4);
- patching layer 0 where both prompts hold the same token at the same position
  changes nothing (same tolerances);
- every layer's patch equals one plain float32 pass over the target with one
  hook at that layer (log-probs within 1e-4, the same greedy answer).
A candidate that leaves the target's path before the patched position keeps
its unpatched probability. The pair draws and the table are checked on their own.
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext

import matplotlib.pyplot as plt
import polars as pl
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from conftest import (
    PUNCTUATION,
    TINY_CONFIGS,
    digit_tokenizer,
    make_task,
    number_tokenizer,
    tiny_model,
)
from iclprobe.anatomy import anatomy_of
from iclprobe.config import ConfigError, load_settings
from iclprobe.hooks import capture_residual, edit_residual
from iclprobe.patches import (
    _number_ended,
    answer_budget,
    chunks,
    parse_answer,
    patch_replicate,
    patched,
    source_states,
    target_path,
)
from iclprobe.patching import OUTCOMES, draw_pairs, run_patching
from iclprobe.patching_windows import leading_runs, windows
from iclprobe.plots import patching as plot_patching
from iclprobe.prompts import draw_examples, make_prompts
from iclprobe.tokens import encode_answer
from iclprobe.tree import ROOT, TokenTree

ARCHS = sorted(TINY_CONFIGS)
SEED = make_task(function="2*x + 3")
IDENTITY = make_task(name="identity", function="x", x_high=99)


def space_minus_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character, except "␠-": SmolLM2 writes the space before a minus that way."""
    vocab = ["<pad>", "<unk>", "<s>", " -", *[str(d) for d in range(10)], *PUNCTUATION]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" -|."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>"
    )


TOKENIZERS = {"digits": digit_tokenizer, "numbers": number_tokenizer}


# Layers checked against plain passes on SmolLM2 (every layer on the tiny models).
SMOLLM2_LAYERS = [0, 9, 15, 22, 30]


@pytest.fixture(
    params=[(a, t) for a in ARCHS for t in TOKENIZERS]
    + [pytest.param(("smollm2", None), marks=pytest.mark.real_model, id="smollm2")]
)
def tiny(request):
    """(model, tokenizer): a tiny random model of each architecture and tokenizer, and SmolLM2."""
    arch, kind = request.param
    if arch == "smollm2":
        model, tokenizer, _ = request.getfixturevalue("smollm2")
        torch.set_num_threads(1)
        return model, tokenizer
    tokenizer = TOKENIZERS[kind]()
    return tiny_model(arch, len(tokenizer)), tokenizer


def _is_smollm2(model) -> bool:
    return anatomy_of(model).n_layers == 30


def _logprob_tol(model) -> float:
    """How far two runs of the same tokens may move a log-prob (float32).

    Two rows of one float32 matmul can round differently: with SmolLM2's
    residual stream at ~100 in the last layers, identical inputs gave log-probs
    up to 2.2e-5 apart (tiny models: < 1e-6). Probabilities stay within 1e-5.
    """
    return 5e-5 if _is_smollm2(model) else 1e-5


def _layers(model) -> list[int]:
    return SMOLLM2_LAYERS if _is_smollm2(model) else list(range(anatomy_of(model).n_layers + 1))


# ---------------------------------------------------------------- plain references


@torch.no_grad()
def _plain_resid(model, anatomy, ids: list[int], at: int) -> torch.Tensor:
    """The residual stream (L + 1, d) at position `at` of one plain pass."""
    with capture_residual(anatomy) as resid:
        model(input_ids=torch.tensor([ids]))
    return torch.stack([resid[layer][0, at] for layer in range(anatomy.n_layers + 1)])


def _at(position: int, value: torch.Tensor):
    """An edit of one position of the first pass only: decoding steps after it pass through
    (with the position 0, a step's one token would otherwise be edited again)."""
    calls = []

    def edit(resid):  # (1, S, d)
        calls.append(resid.shape[1])
        if len(calls) > 1:
            return resid
        out = resid.clone()
        out[0, position] = value
        return out

    return edit


@torch.no_grad()
def _plain_logprob(model, anatomy, answer, layer=None, value=None, at=None) -> float:
    """log P of an answer's span in one plain pass, patched at position `at` if asked."""
    ids = torch.tensor([answer.ids])
    if layer is None:
        logits = model(input_ids=ids).logits[0]
    else:
        with edit_residual(anatomy, layer, _at(at, value)):
            logits = model(input_ids=ids).logits[0]
    logp = logits.log_softmax(-1)  # (T, V)
    return float(sum(logp[i - 1, answer.ids[i]] for i in answer.span))


@torch.no_grad()
def _plain_greedy(model, anatomy, tokenizer, answer, budget, layer=None, value=None) -> str:
    """The greedy answer from the boundary: HF generate, patched at d when its path passes d."""
    ids, b, d = answer.ids, answer.boundary, answer.decision
    logits = model(input_ids=torch.tensor([ids[: d + 1]])).logits[0]
    leave = next((i for i in range(b, d + 1) if int(logits[i - 1].argmax()) != ids[i]), None)
    prompt = torch.tensor([ids[: d + 1] if leave is None else ids[:leave]])
    hook = layer is not None and leave is None
    with edit_residual(anatomy, layer, _at(d, value)) if hook else nullcontext():
        new = model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=budget,
            do_sample=False,
            pad_token_id=0,
        )[0, prompt.shape[1] :].tolist()
    head = ids[b : prompt.shape[1]]
    return tokenizer.decode(head + _until_ended(tokenizer, head, new))


def _until_ended(tokenizer, head, tokens):
    ends = (
        k for k in range(1, len(tokens) + 1) if _number_ended(tokenizer.decode(head + tokens[:k]))
    )
    return tokens[: next(ends, len(tokens))]


def _prompts(task=SEED, target=IDENTITY, k=3):
    """The source context (task's first k examples) and the target's (target's first k)."""
    sx, sy = draw_examples(task, 1)
    tx, ty = draw_examples(target, 1)
    return task.context_text(sx[:k], sy[:k]), target.context_text(tx[:k], ty[:k])


def _run(model, tokenizer, context, examples, pairs, task=SEED):
    anatomy = anatomy_of(model)
    sources = source_states(model, anatomy, tokenizer, task, context, [s for s, _ in pairs])
    paths = [target_path(tokenizer, task, examples, t) for _, t in pairs]
    return sources, paths, patch_replicate(model, anatomy, tokenizer, task, paths, sources)


# ---------------------------------------------------------------- parity


def _check_against_plain(model, tokenizer, context, pairs, sources, paths, results, layers, task):
    anatomy = anatomy_of(model)
    budget = answer_budget(task, [s.y for s in sources])
    for (x_s, _), source, path, result in zip(pairs, sources, paths, results, strict=True):
        own = encode_answer(tokenizer, context + task.query_text(x_s), task, source.y)
        resid = _plain_resid(model, anatomy, own.ids, own.decision)  # (L + 1, d)
        # The stream grows to ~100 in the last layers: compare relative to its size there.
        torch.testing.assert_close(source.resid, resid, atol=1e-4, rtol=1e-5)
        assert source.logprob == pytest.approx(_plain_logprob(model, anatomy, own), abs=1e-4)
        assert set(result.logprobs) >= {path.y, source.y}
        d = path.answer.decision  # the target's, for f(x_target): every candidate is patched there
        for y, per_layer in result.logprobs.items():
            answer = encode_answer(tokenizer, path.context, task, y)
            clean = _plain_logprob(model, anatomy, answer)
            assert result.clean_logprobs[y] == pytest.approx(clean, abs=1e-4)
            for layer in layers:
                expected = (
                    _plain_logprob(model, anatomy, answer, layer, resid[layer], d)
                    if result.on_path[y]
                    else clean
                )
                assert per_layer[layer] == pytest.approx(expected, abs=1e-4), (y, layer)
        assert result.clean_greedy_text == _plain_greedy(
            model, anatomy, tokenizer, path.answer, budget
        )
        for layer in layers:
            expected = _plain_greedy(
                model, anatomy, tokenizer, path.answer, budget, layer, resid[layer]
            )
            assert result.greedy_texts[layer] == expected, layer


def test_batched_patch_equals_plain_passes_with_one_hook(tiny):
    model, tokenizer = tiny
    context, examples = _prompts()
    pairs = [(5, 7), (12, 30)]
    sources, paths, results = _run(model, tokenizer, context, examples, pairs)
    layers = _layers(model)
    _check_against_plain(model, tokenizer, context, pairs, sources, paths, results, layers, SEED)


def _assert_unchanged(result, logprob_tol: float) -> None:
    """Every layer's probabilities equal the unpatched ones within 1e-5, log-probs within tol."""
    for y, per_layer in result.logprobs.items():
        clean = result.clean_logprobs[y]
        assert per_layer == pytest.approx([clean] * len(per_layer), abs=logprob_tol)
        probs = [math.exp(v) for v in per_layer]
        assert probs == pytest.approx([math.exp(clean)] * len(per_layer), abs=1e-5)
    assert set(result.greedy_texts) == {result.clean_greedy_text}


def test_patching_with_own_activations_changes_nothing(tiny):
    model, tokenizer = tiny
    context, _ = _prompts()
    _, _, results = _run(model, tokenizer, context, context, [(17, 17)])
    _assert_unchanged(results[0], logprob_tol=_logprob_tol(model))


@torch.no_grad()
def test_patching_the_last_layer_gives_the_source_distribution(tiny):
    model, tokenizer = tiny
    anatomy = anatomy_of(model)
    context, examples = _prompts()
    source = source_states(model, anatomy, tokenizer, SEED, context, [5])[0]
    own = encode_answer(tokenizer, context + SEED.query_text(5), SEED, source.y)
    expected = model(input_ids=torch.tensor([own.ids])).logits[0, own.decision]  # (V,)
    path = target_path(tokenizer, SEED, examples, 7).answer
    tree = TokenTree(model, path.ids[: path.decision])
    last = anatomy.n_layers
    with patched(anatomy, [(0, last, source.resid[last])]):
        logits = tree.add([path.ids[path.decision]], [ROOT])[0]
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    clean = model(input_ids=torch.tensor([path.ids])).logits[0, path.decision]
    assert (clean - expected).abs().max() > 1e-3  # the patch did change the target


def test_patching_layer_zero_at_the_same_token_changes_nothing(tiny):
    """At layer 0 the stream is the token's embedding (and GPT-2's position embedding)."""
    model, tokenizer = tiny
    context = SEED.context_text([1, 2], [5, 7])
    examples = IDENTITY.context_text([4, 6], [4, 6])  # as long as the source's, in tokens
    sources, paths, results = _run(model, tokenizer, context, examples, [(3, 8)])
    own = encode_answer(tokenizer, context + SEED.query_text(3), SEED, sources[0].y)
    target = paths[0].answer
    assert own.decision == target.decision
    assert own.ids[own.decision] == target.ids[target.decision]
    result = results[0]
    last = anatomy_of(model).n_layers
    tol = _logprob_tol(model)
    for y, per_layer in result.logprobs.items():
        assert per_layer[0] == pytest.approx(result.clean_logprobs[y], abs=tol)
        assert math.exp(per_layer[0]) == pytest.approx(math.exp(result.clean_logprobs[y]), abs=1e-5)
    assert result.greedy_texts[0] == result.clean_greedy_text
    # Later layers do carry the source's context: the test can fail.
    shifts = [abs(v[last] - result.clean_logprobs[y]) for y, v in result.logprobs.items()]
    assert max(shifts) > 1e-3


def test_a_candidate_off_the_path_keeps_its_unpatched_probability():
    tokenizer = space_minus_tokenizer()
    model = tiny_model("llama", len(tokenizer))
    anatomy = anatomy_of(model)
    task = make_task(function="x - 10", x_high=30)
    context, examples = task.context_text([1, 21], [-9, 11]), task.context_text([4, 26], [-6, 16])
    # A positive target answer has "␠" at its decision position; -8 writes "␠-" there.
    pairs = [(2, 25), (20, 3)]
    sources, paths, results = _run(model, tokenizer, context, examples, pairs, task)
    off, on = results
    assert (off.on_path[-8], off.on_path[15]) == (False, True)
    answer = encode_answer(tokenizer, paths[0].context, task, -8)
    assert off.logprobs[-8] == [off.clean_logprobs[-8]] * (anatomy.n_layers + 1)
    assert off.clean_logprobs[-8] == pytest.approx(_plain_logprob(model, anatomy, answer), abs=1e-4)
    # A negative target answer decides at the comma, before "␠": positive answers pass it.
    assert (on.on_path[-7], on.on_path[10]) == (True, True)
    _check_against_plain(
        model, tokenizer, context, pairs, sources, paths, results, _layers(model), task
    )


# ---------------------------------------------------------------- zero-shot, any template


def _with_bos(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """The same tokenizer, adding "<s>" before every text (as Llama's and Gemma's do)."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    bos = tokenizer.convert_tokens_to_ids("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>"
    )


# Templates that start with {x}: without BOS, zero-shot targets share no first token.
X_FIRST = {"arrow": ("{x} -> {y}", "\n"), "space": ("{x} {y}", "; ")}


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
@pytest.mark.parametrize("template", sorted(X_FIRST))
def test_zero_shot_patching_of_templates_that_start_with_x(tiny, template, bos):
    """Every layer's patch equals a plain pass with one hook, whether or not the zero-shot
    targets share a first token (8, 31 and 9 share none without BOS), and patching a target
    with its own activations changes nothing."""
    model, tokenizer = tiny
    if bos:
        if _is_smollm2(model):
            pytest.skip("SmolLM2's tokenizer adds no BOS")
        tokenizer = _with_bos(tokenizer)
    text, separator = X_FIRST[template]
    task = make_task(template=text, separator=separator)
    context = task.context_text([3, 12, 40], [task.fn(3), task.fn(12), task.fn(40)])
    pairs = [(5, 8), (17, 31), (22, 9)]
    sources, paths, results = _run(model, tokenizer, context, "", pairs, task)
    first_tokens = {p.answer.ids[0] for p in paths}
    assert len(first_tokens) == (1 if bos else 3)
    layers = _layers(model)
    _check_against_plain(model, tokenizer, context, pairs, sources, paths, results, layers, task)
    for x in (8, 31):  # the target's own zero-shot prompt as its source
        _, _, own = _run(model, tokenizer, "", "", [(x, x)], task)
        _assert_unchanged(own[0], logprob_tol=_logprob_tol(model))


def test_pairs_run_in_groups_that_bound_each_tree_pass():
    """A bound of a few tokens per pass splits the pairs into groups of their own trees; the
    results are those of one tree (within float32 rounding)."""
    tokenizer = digit_tokenizer()
    model = tiny_model("llama", len(tokenizer))
    anatomy = anatomy_of(model)
    context, examples = _prompts()
    pairs = [(5, 7), (12, 30), (20, 41), (9, 2)]
    xs = [s for s, _ in pairs]
    one = source_states(model, anatomy, tokenizer, SEED, context, xs)
    split = source_states(model, anatomy, tokenizer, SEED, context, xs, max_tree_tokens=12)
    for a, b in zip(one, split, strict=True):
        torch.testing.assert_close(a.resid, b.resid, atol=1e-5, rtol=1e-5)
    paths = [target_path(tokenizer, SEED, examples, t) for _, t in pairs]
    whole = patch_replicate(model, anatomy, tokenizer, SEED, paths, one)
    per_pass = anatomy.n_layers + 1 + 1  # one pair: its decision token's L + 2 copies (and d)
    grouped = patch_replicate(model, anatomy, tokenizer, SEED, paths, one, per_pass + 1)
    assert chunks([per_pass] * 4, per_pass + 1) == [[0], [1], [2], [3]]
    for a, b in zip(whole, grouped, strict=True):
        assert a.greedy_texts == b.greedy_texts and a.on_path == b.on_path
        for y, values in a.logprobs.items():
            assert b.logprobs[y] == pytest.approx(values, abs=1e-5)


# ---------------------------------------------------------------- draws and the table


def test_pairs_are_reproducible_and_keep_answers_apart():
    source_xs, target_xs = list(range(10)), list(range(20, 30))
    pairs = draw_pairs(SEED, 1, 12, source_xs, target_xs)
    assert pairs == draw_pairs(SEED, 1, 12, source_xs, target_xs)
    assert pairs != draw_pairs(SEED, 2, 12, source_xs, target_xs)
    assert len({s for s, _ in pairs}) == 12
    f = SEED.fn
    for x_s, x_t in pairs:
        assert x_s not in source_xs and x_t not in target_xs
        assert len({x_t, f(x_t), f(x_s)}) == 3 and x_t != x_s
    # The identity cannot keep x_t and f(x_t) apart; the rest still holds.
    for x_s, x_t in draw_pairs(IDENTITY, 1, 5, [], []):
        assert x_t != x_s
    with pytest.raises(ValueError, match="patching.pairs: 50 pairs"):
        draw_pairs(SEED, 1, 50, source_xs, target_xs)


def test_answers_are_parsed_up_to_the_terminator():
    assert parse_answer(" 12),", SEED) == 12
    assert parse_answer(" -5)", SEED) == -5
    assert parse_answer(" 12", SEED) is None
    assert parse_answer(" (3", SEED) is None


def test_the_table_has_one_row_per_pair_and_layer_and_consistent_outcomes():
    tokenizer = digit_tokenizer()
    model = tiny_model("llama", len(tokenizer))
    task = make_task(replicates=2)
    table = run_patching(
        make_prompts(task),
        make_prompts(IDENTITY),
        model,
        tokenizer,
        model_name="tiny",
        task=task,
        target_task=IDENTITY,
        replicates=[1, 2],
        pairs=2,
        context_examples=3,
    )
    n_layers = anatomy_of(model).n_layers
    assert table.height == 2 * 2 * (n_layers + 1)
    design = ["model", "task", "replicate", "layer", "x_source", "x_target", "p_task"]
    design += ["p_answer", "p_target_default", "greedy_text", "outcome"]
    assert set(design) <= set(table.columns)
    assert set(table["outcome"]) <= set(OUTCOMES)
    assert (table["target_context"] == "identity").all()
    for row in table.iter_rows(named=True):
        value = parse_answer(row["greedy_text"], task)
        assert row["greedy_value"] == value
        ys = {"target": row["y_target_default"], "task": row["y_task"], "answer": row["y_answer"]}
        expected = next((o for o in OUTCOMES[:3] if value is not None and value == ys[o]), "other")
        assert row["outcome"] == expected
        assert row["default_distinct"] == (ys["target"] not in (ys["task"], ys["answer"]))
        assert row["p_task"] == pytest.approx(math.exp(row["logprob_task"]))
        assert row["relative_depth"] == row["layer"] / n_layers
        assert row["y_task"] == task.fn(row["x_target"])
    # The floor, from the self-patched control, marks each probability's change.
    floors = table["floor_nats"].unique().to_list()
    assert len(floors) == 1 and 0 <= floors[0] < 1e-4
    for what in ("task", "answer"):
        moved = (table[f"logprob_{what}"] - table[f"clean_logprob_{what}"]).abs() > floors[0]
        assert table[f"{what}_effect_resolved"].to_list() == moved.to_list()
    # Each pair's values sit on its own rows: the layers of a pair share x and y.
    per_pair = table.group_by("replicate", "pair").agg(pl.col("x_source", "y_task").n_unique())
    assert (per_pair["x_source"] == 1).all() and (per_pair["y_task"] == 1).all()
    zero_shot = run_patching(
        make_prompts(task),
        None,
        model,
        tokenizer,
        model_name="tiny",
        task=task,
        target_task=None,
        replicates=[1],
        pairs=2,
        context_examples=3,
    )
    assert (zero_shot["target_context"] == "zero_shot").all()
    # A template that starts with {x}: without BOS the zero-shot targets share no token.
    arrow = make_task(template="{x} -> {y}", separator="\n", replicates=1)
    table = run_patching(
        make_prompts(arrow),
        None,
        model,
        tokenizer,
        model_name="tiny",
        task=arrow,
        target_task=None,
        replicates=[1],
        pairs=3,
        context_examples=3,
    )
    assert table.height == 3 * (n_layers + 1)
    assert table["p_task"].is_between(0, 1).all() and table["greedy_text"].is_not_null().all()


# ---------------------------------------------------------------- SmolLM2


@pytest.mark.real_model
def test_smollm2_negative_answers_leave_the_path(smollm2):
    """SmolLM2 writes "␠-" before a negative number: it replaces the "␠" that is patched."""
    model, tokenizer, _ = smollm2
    task = make_task(function="x - 10", x_high=30)
    context, examples = task.context_text([1, 21], [-9, 11]), task.context_text([4, 26], [-6, 16])
    _, _, results = _run(model, tokenizer, context, examples, [(2, 25)], task)
    result = results[0]
    assert (result.on_path[-8], result.on_path[15]) == (False, True)
    assert result.logprobs[-8] == [result.clean_logprobs[-8]] * 31


@pytest.mark.real_model
def test_smollm2_self_patching_sets_a_small_floor(smollm2):
    """The job's control, a target patched with its own activations, moves SmolLM2's float32
    log-probs by a little, and only changes above that count as resolved."""
    model, tokenizer, _ = smollm2
    torch.set_num_threads(1)
    task = make_task(replicates=1)
    table = run_patching(
        make_prompts(task),
        make_prompts(IDENTITY),
        model,
        tokenizer,
        model_name="smollm2",
        task=task,
        target_task=IDENTITY,
        replicates=[1],
        pairs=2,
        context_examples=5,
    )
    floor = table["floor_nats"][0]
    assert 0 < floor < 1e-3
    gaps = (table["logprob_task"] - table["clean_logprob_task"]).abs()
    assert table["task_effect_resolved"].to_list() == (gaps > floor).to_list()
    assert table["task_effect_resolved"].any()  # later layers do move P(f(x_target))


# ---------------------------------------------------------------- settings, windows, figures


def test_patching_settings_are_checked_before_any_job():
    task = {"function": "x", "x_range": [0, 9], "n_examples": 5}
    raw = {"models": {"m": {"path": "/nowhere"}}, "tasks": {"a": task}}
    with pytest.raises(ConfigError, match="patching.pairs: 6 pairs need .* task 'a' has 5"):
        load_settings({**raw, "patching": {"context_examples": 5, "pairs": 6}})
    # The context is capped at the examples the task and its target have.
    tasks = {"a": {**task, "patch_target": "b"}, "b": {**task, "n_examples": 3}}
    settings = load_settings({**raw, "tasks": tasks, "patching": {"context_examples": 9}})
    assert settings.patching.examples_for(settings.tasks["a"], settings.tasks["b"]) == 3
    assert settings.patching.examples_for(settings.tasks["b"], None) == 3
    with pytest.raises(ConfigError, match="patching.pairs: 8 pairs need .* the 3 context"):
        load_settings({**raw, "tasks": tasks, "patching": {"pairs": 8}})
    off = load_settings({**raw, "patching": {"enabled": False, "pairs": 60}})
    assert off.patching.pairs == 60


def _synthetic(n_layers: int = 4, floor: float = 1e-5) -> pl.DataFrame:
    """Three pairs of one model and task: the task leads at layers 1–2, the answer at 3–4.

    Pair 3's target answers f(x_target) itself: its probabilities (0.9 everywhere)
    must not enter the means.
    """
    rows = []
    curves = {  # layer -> (p_task, p_answer, p_target_default) of pairs 1 and 2
        0: (0.1, 0.01, 0.5),
        1: (0.6, 0.01, 0.2),
        2: (0.5, 0.1, 0.2),
        3: (0.1, 0.6, 0.05),
        4: (0.05, 0.7, 0.01),
    }
    for pair in (1, 2, 3):
        for layer in range(n_layers + 1):
            p_task, p_answer, p_default = curves[layer]
            if pair == 3:
                p_task = p_default = 0.9
            outcome = ("target", "task", "task", "answer", "answer")[layer]
            rows.append(
                {
                    "model": "m",
                    "task": "t",
                    "target_context": "identity",
                    "replicate": 1,
                    "pair": pair,
                    "layer": layer,
                    "n_layers": n_layers,
                    "relative_depth": layer / n_layers,
                    "p_task": p_task * (1.1 if pair == 2 else 1.0),
                    "p_answer": p_answer,
                    "p_target_default": p_default,
                    "default_distinct": pair != 3,
                    "outcome": "target" if pair == 3 else outcome,
                    "first_outcome": "other" if layer == 0 else outcome,
                    "source_p_answer": 0.8,
                    "floor_nats": floor,
                }
            )
    return pl.DataFrame(rows)


def test_windows_mark_where_the_task_and_where_the_answer_lead():
    table = windows(_synthetic())
    assert table["n_pairs"].to_list() == [2] * 5
    assert table["p_task"][1] == pytest.approx((0.6 + 0.66) / 2)
    assert table.filter("task_leads")["layer"].to_list() == [1, 2]
    assert table.filter("answer_leads")["layer"].to_list() == [3, 4]
    runs = leading_runs(table)
    assert runs.select("first", "last").rows() == [(1, 2)]
    assert leading_runs(table, "answer_leads").select("first", "last").rows() == [(3, 4)]
    # A floor of log 3 nats resolves only a lead of more than 3×: at layer 1, 0.63 against
    # the target's 0.2, but not at layer 2 (0.525 against 0.2).
    coarse = windows(_synthetic(floor=math.log(3)))
    assert coarse.filter("task_leads")["layer"].to_list() == [1]
    assert coarse.filter("answer_leads")["layer"].to_list() == [3, 4]  # 0.6, 0.7 ≥ 3 × 0.1


def test_probability_figure_draws_the_means_of_pairs_with_three_answers():
    fig = plot_patching.build_probabilities(_synthetic(), function="x")
    ax = fig.axes[0]
    handles, labels = ax.get_legend_handles_labels()
    color = next(
        h for h, t in zip(handles, labels, strict=True) if t.startswith("P(f(x_target))")
    ).get_color()
    task = next(l for l in ax.get_lines() if len(l.get_xdata()) == 5 and l.get_color() == color)
    assert list(task.get_ydata()) == pytest.approx([0.105, 0.63, 0.525, 0.105, 0.0525])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("Hendel et al. 2023" in t for t in legend)
    assert any("layers 12–15 of 30" in t for t in legend)
    assert "2 of 3 pairs" in ax.get_title()
    plt.close(fig)


def test_outcome_figure_stacks_shares_per_layer():
    fig = plot_patching.build_outcomes(_synthetic(), function="x")
    top = fig.axes[0]
    heights = {}
    for bars in top.containers:
        heights[bars.get_label()] = [b.get_height() for b in bars]
    assert heights["task: f(x_target)"] == pytest.approx([0, 2 / 3, 2 / 3, 0, 0])
    totals = [sum(h[i] for h in heights.values()) for i in range(5)]
    assert totals == pytest.approx([1.0] * 5)
    plt.close(fig)


def test_window_figure_places_layers_on_relative_depth():
    fig = plot_patching.build_windows(windows(_synthetic()))
    ax = fig.axes[0]
    bars = [c for c in ax.collections if c.get_paths()]
    starts = sorted(round(float(p.vertices[:, 0].min()), 3) for c in bars for p in c.get_paths())
    assert starts == [round((layer - 0.5) / 4, 3) for layer in (1, 2, 3, 4)]
    plt.close(fig)
