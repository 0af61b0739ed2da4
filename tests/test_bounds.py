"""Bounds on each stage's work, checked when the config is read.

Each bound refuses a config beyond it, naming the key, the value and the bound;
the estimates are checked against independent counts (a tokenizer's own tokens,
the integer lens's own trie); a dry run of configs whose answers are huge,
negative or of mixed length plans its jobs or is refused in the terminal, never
inside a job. How long such a dry run takes is measured by
benchmarks/dry_run_bounds.py, not here.
"""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from test_workflow import planned_jobs, small_config, snakemake, write_config

from conftest import REPO, digit_tokenizer, make_task, number_tokenizer
from iclprobe import bounds
from iclprobe.config import ConfigError, load_settings
from iclprobe.integer_lens import candidate_paths
from iclprobe.preflight import RawTokenizer
from iclprobe.prompts import draw_examples, render
from iclprobe.trie import build_trie

DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
HUGE = {
    "poly": {"function": "x**5", "x_range": [0, 99], "n_examples": 30},
    "steep": {"function": "10**9*x", "x_range": [0, 99], "n_examples": 30},
    "negative": {"function": "-7*x**3 - 5", "x_range": [-99, 99], "n_examples": 30},
    "mixed": {"function": "x**4 - 10**6", "x_range": [-60, 60], "n_examples": 30},
}


def _config(**changes) -> dict:
    """The default config with dotted keys set (created where absent)."""
    raw = copy.deepcopy(DEFAULT)
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = raw
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return raw


def _one_task(spec: dict, **changes) -> dict:
    raw = _config(**changes)
    raw["tasks"] = {"t": spec}
    return raw


def test_the_default_config_is_within_every_bound():
    estimates = bounds.check_bounds(load_settings(DEFAULT))
    assert all(e.within for e in estimates)
    stages = {e.stage for e in estimates}
    assert stages == {"prompts", "forward", "probe", "lens", "heads", "patching"}
    # The seed task's integer lens: 0 … 412, the 42 trie nodes the lens docs quote.
    seed = {e.bound.name: e for e in estimates if e.task == "seed_2x_plus_3"}
    assert seed["integer-lens candidates"].value == 413
    assert seed["tokens per token-tree pass"].value == 6 * 42


@pytest.mark.parametrize(
    "spec, changes, expected",
    [
        # The lens's default candidates 0 … 4·max(y): 4 · 99**5 + 1 of them.
        (
            HUGE["poly"],
            {},
            (
                r"lens\.integers\.candidate_range: the lens stage of task 't' would need candidates "
                r"0 … 38039601996 .* = 38,039,601,997 integers, more than the bound of 10,000"
            ),
        ),
        (
            HUGE["negative"],
            {},
            r"candidates -6792098 … 27168352 .* = 33,960,451 integers",
        ),
        (
            HUGE["poly"],
            {"lens.integers.candidate_range": [0, 20_000]},
            r"candidates 0 … 20000 \(lens\.integers\.candidate_range\) = 20,001 integers",
        ),
        # 10,000 candidates are allowed, but not 6 examples × their 1,000 trie nodes in one pass.
        (
            HUGE["poly"],
            {"lens.integers.candidate_range": [0, 9_999]},
            (
                r"lens\.integers\.candidate_range: .* 6 examples × 1,000 trie nodes .* = 6,000 tokens, "
                r"more than the bound of 4,096"
            ),
        ),
        (
            {"function": "10**250 + x", "x_range": [0, 999], "n_examples": 200},
            {"lens.enabled": False},
            (
                r"tasks\.t\.n_examples: the prompts stage .* a longest prompt of 200 examples = "
                r"[\d,]+ tokens, more than the bound of 32,768"
            ),
        ),
        (
            {"function": "x", "x_range": [0, 9_999], "n_examples": 2_000},
            {"lens.enabled": False, "replicates": 100},
            (
                r"replicates: the prompts stage .* 100 replicates × 2,000 rows × [\d,]+ bytes = "
                r"[\d,]+ bytes, more than the bound of 1,073,741,824"
            ),
        ),
        (
            {"function": "x", "x_range": [0, 9_999], "n_examples": 30},
            {"replicates": 40_000},
            r"replicates: the forward stage .* 40,000 replicates × [\d,]+ tokens",
        ),
        (
            {"function": "x", "x_range": [0, 9_999], "n_examples": 1_000},
            {"forward.batch_size": 64},
            (
                r"forward\.batch_size: .* 64 rows × [\d,]+ tokens = [\d,]+ rows × context tokens, "
                r"more than the bound of 131,072"
            ),
        ),
        (
            {"function": "x", "x_range": [0, 9_999], "n_examples": 30},
            {"replicates": 20, "probe.replicates": None, "lens.enabled": False},
            (
                r"probe\.replicates: the probe stage .* 20 replicates × [\d,]+ tokens \(7 contexts, "
                r"and 10,000 queries after each\)"
            ),
        ),
        (
            {"function": "x", "x_range": [0, 999], "n_examples": 400},
            {"probe.ks": [300], "lens.enabled": False},
            r"probe\.batch_size: .* 64 queries × [\d,]+ context tokens \(k = 300\)",
        ),
        (
            {"function": "x", "x_range": [0, 999], "n_examples": 400},
            {"probe.enabled": False, "lens.enabled": False, "heads.causal.batch_rows": 270},
            r"heads\.causal\.batch_rows: .* 270 rows × [\d,]+ context tokens \(example 400\)",
        ),
        (
            {"function": "10**200 * x", "x_range": [0, 9_999], "n_examples": 30},
            {
                "probe.enabled": False,
                "lens.enabled": False,
                "heads.enabled": False,
                "patching.pairs": 9_000,
            },
            r"patching\.replicates: the patching stage .* 3 replicates × [\d,]+ tokens",
        ),
        (
            {"function": "x", "x_range": [0, 9], "n_examples": 3, "answer_range": [0, 2**60]},
            {},
            (
                r"tasks\.t\.answer_range: \[0, 1152921504606846976\] holds \d+ values; at most "
                r"9007199254740992"
            ),
        ),
    ],
)
def test_each_bound_refuses_naming_the_key_the_value_and_the_bound(spec, changes, expected):
    with pytest.raises(ConfigError, match=expected):
        load_settings(_one_task(spec, **changes))


def test_candidates_stay_a_lazy_range():
    """The default range of a task with huge answers is never a list (it has 4e11 integers)."""
    settings = load_settings(_one_task(HUGE["steep"], **{"lens.integers.enabled": False}))
    task = settings.tasks["t"]
    candidates = settings.lens.candidates_for(task)
    assert isinstance(candidates, range)
    assert (candidates[0], candidates[-1], len(candidates)) == (0, 4 * 99 * 10**9, 396 * 10**9 + 1)
    assert settings.lens.integer_replicates_for(task) == []
    # An answer_range is lazy too, and its probes for the tokenizer come from its ends.
    wide = make_task(answer_low=-(10**12), answer_high=10**12)
    assert isinstance(wide.candidates(), range) and len(wide.candidates()) == 2 * 10**12 + 1


@pytest.mark.parametrize("function", ["x", "x - 20", "2*x + 3"])
def test_trie_estimate_is_the_lens_trie_for_one_token_per_character(function):
    """The estimate counts characters; with one token per character it is the trie itself."""
    task = make_task(function=function, x_high=40)
    candidates = range(-25, 170)
    texts = bounds.candidate_texts(task, candidates[0], candidates[-1])
    estimated = bounds.trie_nodes(texts)
    trie = build_trie(list(candidates), candidate_paths(digit_tokenizer(), task, candidates))
    assert estimated == len(trie.run.tokens)
    # A tokenizer that writes a whole number as one token runs fewer nodes: an over-estimate.
    merged = build_trie(list(candidates), candidate_paths(number_tokenizer(), task, candidates))
    assert len(merged.run.tokens) < estimated


@pytest.mark.parametrize("make_tokenizer", [digit_tokenizer, number_tokenizer])
def test_prompt_estimate_is_never_below_the_tokens(make_tokenizer):
    """Every replicate's prompt tokenizes to at most the estimate; with equally long examples
    and one token per character it is the prompt's length exactly."""
    tokenizer = make_tokenizer()
    for task in (
        make_task(function="x - 20", x_high=99),
        make_task(function="x", x_low=10, x_high=99),
    ):
        estimate = bounds._Texts(task).prompt(task.n_examples)
        lengths = [
            len(tokenizer(render(task, *draw_examples(task, r))[0])["input_ids"])
            for r in range(1, task.replicates + 1)
        ]
        assert max(lengths) <= estimate
    if make_tokenizer is digit_tokenizer:  # every example of x on 10…99 is 10 characters
        assert set(lengths) == {estimate - bounds.SPECIAL_TOKENS}


@pytest.mark.real_model
def test_prompt_estimate_is_never_below_smollm2s_tokens(smollm2_folder):
    tokenizer = RawTokenizer.from_folder(smollm2_folder)
    for name, task in load_settings(DEFAULT).tasks.items():
        estimate = bounds._Texts(task).prompt(task.n_examples)
        for r in range(1, task.replicates + 1):
            text = render(task, *draw_examples(task, r))[0]
            assert len(tokenizer(text)["input_ids"]) <= estimate, (name, r)


def test_dry_runs_of_huge_negative_and_mixed_answers(tmp_path, tiny_llama_folder):
    """Refused in the terminal, naming the setting, before any job; planned once it is set."""
    config = small_config({"path": str(tiny_llama_folder)})
    config["tasks"] = copy.deepcopy(HUGE)
    write_config(tmp_path, config)
    run = snakemake(tmp_path, "--dry-run", "all")
    out = run.stdout + run.stderr
    assert run.returncode != 0
    assert re.search(r"lens\.integers\.candidate_range: the lens stage of task '\w+' would", out)
    assert "OverflowError" not in out and "MemoryError" not in out
    assert not (tmp_path / "results").exists()

    config["lens"] = {"integers": {"candidate_range": [-1000, 1000]}}
    write_config(tmp_path, config)
    jobs = planned_jobs(tmp_path)
    assert jobs["lens"] == 4 and jobs["patching"] == 4 and jobs["forward"] == 4
    # Without the integer lens no range is needed at all.
    config["lens"] = {"integers": {"enabled": False}}
    write_config(tmp_path, config)
    assert planned_jobs(tmp_path)["lens"] == 4
