"""The logit lens against plain Hugging Face passes (float32), on every supported architecture.

At layer L the lens is the model itself: its top-1 token is the greedy token
at the decision position, and its distribution over candidate integers is the
model's own, normalised the same way (at each position over the tokens that
continue some candidate), computed here with one plain pass per candidate
(tolerance 1e-4 nats). Tiny random models of every architecture run with a
digit-per-token and a number-per-token tokenizer; SmolLM2 for real.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys

import polars as pl
import pytest
import torch
import yaml

from conftest import REPO, TINY_CONFIGS, digit_tokenizer, make_task, number_tokenizer, tiny_model
from iclprobe.config import LensSettings
from iclprobe.floor import MIN_NATS, SAFETY
from iclprobe.forward import encode_prompts, run_forward
from iclprobe.lens import LensPlan, classify_vocabulary, run_lens
from iclprobe.prompts import make_prompts
from iclprobe.tokens import encode_answer
from iclprobe.trie import CandidateTokensError, build_trie

TOL = 1e-4


# Tiny matrices: with two threads on a shared 2-core machine each pass waits on the other.
pytestmark = pytest.mark.usefixtures("one_thread")


TOKENIZERS = {"digits": digit_tokenizer, "numbers": number_tokenizer}
# Answers of both signs (from −3), two-digit candidates up to 4·max(y) = 24.
TASK = make_task(name="minus3", function="x - 3", x_low=0, x_high=9, n_examples=6, replicates=2)


def _settings(**overrides) -> LensSettings:
    spec = {
        "enabled": True,
        "examples": (1, 3, "last"),
        "replicates": None,
        "top_k": 5,
        "integers": True,
        "integer_replicates": None,
        "candidate_range": None,
    }
    return LensSettings(**{**spec, **overrides})


def _run(model, tokenizer, task, settings):
    prompts = make_prompts(task)
    forward = run_forward(prompts, model, tokenizer, model_name="m", task=task)
    plan = LensPlan.for_task(settings, task)
    lens, integers = run_lens(forward, prompts, model, tokenizer, task=task, plan=plan)
    return prompts, forward, lens, integers


def _texts(prompts: pl.DataFrame) -> dict[int, str]:
    return dict(prompts.group_by("replicate").agg(pl.col("text").first()).iter_rows())


@torch.no_grad()
def _plain_candidate_logprobs(model, tokenizer, task, context: str, candidates) -> list[float]:
    """Each candidate after `context` in its own plain pass, normalised per position by brute force."""
    encoded = [encode_answer(tokenizer, context, task, c) for c in candidates]
    paths = [e.answer_ids for e in encoded]
    out = []
    for enc, path in zip(encoded, paths, strict=True):
        logits = model(input_ids=torch.tensor([enc.ids])).logits[0].float()  # (S, V)
        total = 0.0
        for j, token in enumerate(path):
            allowed = sorted({p[j] for p in paths if len(p) > j and p[:j] == path[:j]})
            row = logits[enc.boundary + j - 1]  # the position before the token
            total += float(row[token] - torch.logsumexp(row[allowed], dim=0))
        out.append(total)
    return out


@pytest.mark.parametrize("tokenizer_kind", sorted(TOKENIZERS))
@pytest.mark.parametrize("arch", sorted(TINY_CONFIGS))
@torch.no_grad()
def test_last_layer_lens_is_the_model(arch, tokenizer_kind):
    tokenizer = TOKENIZERS[tokenizer_kind]()
    model = tiny_model(arch, len(tokenizer))
    settings = _settings(integer_replicates=1)
    prompts, forward, lens, integers = _run(model, tokenizer, TASK, settings)
    n_layers = model.config.num_hidden_layers
    texts = _texts(prompts)

    # Top-1 at layer L is the greedy token; the answer's probability and the mass
    # on integer-starting tokens match the plain pass's softmax.
    starts = [
        i
        for token, i in tokenizer.get_vocab().items()
        if re.fullmatch(r" ?(-|-?\d+)", token) and token != " "
    ]
    for row in forward.filter(pl.col("example").is_in([1, 3, 6])).iter_rows(named=True):
        ids = tokenizer(texts[row["replicate"]])["input_ids"]
        probs = model(input_ids=torch.tensor([ids])).logits[0].float().softmax(-1)  # (S, V)
        at = probs[row["decision_position"]]  # (V,)
        here = lens.filter(
            (pl.col("replicate") == row["replicate"])
            & (pl.col("example") == row["example"])
            & (pl.col("layer") == n_layers)
        ).sort("rank")
        assert here["token_id"][0] == int(at.argmax())
        assert here["prob"].to_list() == pytest.approx(at.topk(5).values.tolist(), abs=1e-5)
        answer = ids[row["decision_position"] + 1]
        assert here["answer_token_id"][0] == answer
        assert here["answer_prob"][0] == pytest.approx(float(at[answer]), abs=1e-5)
        assert here["answer_rank"][0] == int((at > at[answer]).sum()) + 1
        assert here["p_integer_start"][0] == pytest.approx(float(at[starts].sum()), abs=1e-5)

    # The integer distribution at layer L: the model's own over the candidates.
    candidates = settings.candidates_for(TASK)
    assert candidates[0] == -3 and candidates[-1] == 24
    for row in forward.filter(pl.col("replicate") == 1).iter_rows(named=True):
        if row["example"] not in (1, 3, 6):
            continue
        spans = prompts.filter((pl.col("replicate") == 1) & (pl.col("example") == row["example"]))
        context = texts[1][: spans["answer_start"][0]]
        expected = _plain_candidate_logprobs(model, tokenizer, TASK, context, candidates)
        got = integers.filter((pl.col("example") == row["example"]) & (pl.col("layer") == n_layers))
        assert got["candidate"].to_list() == list(candidates)
        assert got["logprob"].to_list() == pytest.approx(expected, abs=TOL)
    # A proper distribution at every layer, and not the same at every layer.
    sums = integers.group_by("example", "layer").agg(pl.col("logprob").exp().sum())
    assert sums["logprob"].to_list() == pytest.approx([1.0] * sums.height, abs=1e-5)
    spread = integers.group_by("example", "candidate").agg(pl.col("logprob").std())
    assert spread["logprob"].max() > 1e-3
    assert integers["replicate"].unique().to_list() == [1]
    _check_floor(lens, forward, prompts, tokenizer)


def _check_floor(lens: pl.DataFrame, forward: pl.DataFrame, prompts, tokenizer) -> None:
    """The lens's floor: SAFETY × the largest gap between the last layer's log P of the first
    answer token and the forward stage's, recomputed here from the two tables."""
    last = lens.filter(pl.col("layer") == lens["layer"].max(), pl.col("rank") == 1)
    _, encoded = encode_prompts(prompts, tokenizer)
    gaps = []
    for row in last.iter_rows(named=True):
        seq = encoded[row["replicate"] - 1]
        span = seq.answer_tokens[row["example"] - 1]
        scores = forward.filter(
            (pl.col("replicate") == row["replicate"]) & (pl.col("example") == row["example"])
        )["token_logprobs"][0]
        gaps.append(
            abs(math.log(row["answer_prob"]) - scores[row["decision_position"] + 1 - span[0]])
        )
    expected = max(SAFETY * max(gaps), MIN_NATS)
    assert lens["floor_nats"].unique().to_list() == [pytest.approx(expected, rel=1e-9)]
    assert 0 <= lens["floor_nats"][0] < 1e-3


def test_first_numeric_layer_is_the_first_numeric_top1():
    tokenizer = digit_tokenizer()
    model = tiny_model("llama", len(tokenizer), seed=4)
    _, _, lens, _ = _run(model, tokenizer, TASK, _settings(integers=False, integer_replicates=0))
    top1 = lens.filter(pl.col("rank") == 1)
    expected = (
        top1.filter(pl.col("is_numeric"))
        .group_by("replicate", "example")
        .agg(pl.col("layer").min().alias("expected"))
    )
    got = top1.group_by("replicate", "example").agg(pl.col("first_numeric_layer").first())
    joined = got.join(expected, on=["replicate", "example"], how="left")
    assert joined["first_numeric_layer"].to_list() == joined["expected"].to_list()
    digits = {str(d) for d in range(10)}
    assert all(
        (t in digits) == n for t, n in zip(lens["token_text"], lens["is_numeric"], strict=True)
    )


def test_vocabulary_classes_name_numbers_and_integer_starts():
    tokenizer = number_tokenizer()
    classes = classify_vocabulary(tokenizer, len(tokenizer) + 3)  # padded unembedding rows
    vocab = tokenizer.get_vocab()
    for token, numeric, start in [(" 12", True, True), ("7", True, True), (" -", False, True)]:
        assert bool(classes.numeric[vocab[token]]) is numeric, token
        assert bool(classes.integer_start[vocab[token]]) is start, token
    for token in (" ", "-", ")", "a"):
        assert not classes.numeric[vocab[token]], token
    assert classes.integer_start[vocab["-"]] and not classes.integer_start[vocab[" "]]
    assert not classes.numeric[-3:].any()


def test_trie_runs_only_branching_nodes_and_their_ancestors():
    # "␠", digits, ")" as SmolLM2 writes 0…12 (lead 1, digits 10+, terminator 99).
    paths = {c: [1, *(10 + int(d) for d in str(c)), 99] for c in range(13)}
    trie = build_trie(list(paths), list(paths.values()))
    assert not trie.root_branches  # every candidate starts with the space
    assert trie.run.paths == [(1,), (1, 11)] and trie.run.parents == [-1, 0]
    assert trie.branching == [(1,), (1, 11)]  # "␠" → 0…9; "␠1" → ")" or 0, 1, 2
    assert [trie.columns[c] for c in trie.children[1]] == [99, 10, 11, 12]
    # 7 = "␠" then "7": one edge from a branching node; 12 = two edges; "␠7" → ")" adds log 1.
    assert len(trie.edges[7]) == 1 and len(trie.edges[12]) == 2


def test_trie_refuses_a_candidate_that_prefixes_another():
    with pytest.raises(
        CandidateTokensError, match="candidate 1's tokens .* prefix of candidate 12"
    ):
        build_trie([1, 12], [[5, 1], [5, 1, 2]])


@pytest.mark.real_model
def test_smollm2_lens_is_the_model_at_the_last_layer(smollm2):
    model, tokenizer, _ = smollm2
    task = make_task(n_examples=4, replicates=1)
    settings = _settings(examples=(4,), candidate_range=(0, 40))
    prompts, forward, lens, integers = _run(model, tokenizer, task, settings)
    row = forward.filter(pl.col("example") == 4).row(0, named=True)
    ids = tokenizer(_texts(prompts)[1])["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (S, V)
    top1 = lens.filter((pl.col("layer") == 30) & (pl.col("rank") == 1))
    assert top1["token_id"].to_list() == [int(logits[row["decision_position"]].argmax())]
    context = _texts(prompts)[1][: prompts.filter(pl.col("example") == 4)["answer_start"][0]]
    candidates = list(range(41))
    expected = _plain_candidate_logprobs(model, tokenizer, task, context, candidates)
    got = integers.filter(pl.col("layer") == 30).sort("candidate")["logprob"].to_list()
    assert got == pytest.approx(expected, abs=TOL)
    _check_floor(lens, forward, prompts, tokenizer)
    assert lens["floor_nats"][0] > 0  # float32 rounding differs between the two paths


@pytest.mark.parametrize(
    ("lens", "jobs", "integers"),
    [
        ({}, {"lens": 1, "lens_figures": 1}, True),
        ({"integers": {"enabled": False}}, {"lens": 1, "lens_figures": 1}, False),
        ({"enabled": False}, {}, False),
    ],
)
def test_workflow_switches_the_lens_and_its_integers(
    tmp_path, tiny_llama_folder, lens, jobs, integers
):
    """A dry run plans the lens jobs, and the integer table and figures, only when enabled."""
    config = {
        "models": {"m": {"path": str(tiny_llama_folder)}},
        "tasks": {"identity": {"function": "x", "x_range": [0, 20], "n_examples": 4}},
        "replicates": 2,
        "lens": lens,
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow" / "Snakefile")]
    run = subprocess.run(
        [*cmd, "--directory", str(tmp_path), "--dry-run", "--cores", "1", "all"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    table = run.stdout.split("Job stats:")[1].split("Reasons:")[0]
    planned = {k: int(v) for k, v in re.findall(r"^(lens\w*)\s+(\d+)$", table, flags=re.MULTILINE)}
    assert planned == jobs
    assert ("lens-top-tokens.png" in run.stdout) == bool(jobs)
    for name in ("lens-integers.png", "lens-integers-mean.png", "lens_integers/m/identity"):
        assert (name in run.stdout) == integers, name
