"""Checks before any job, from a prepared model's tokenizer.json and config.json alone.

The raw `tokenizers` wrapper must tokenize exactly as the HF tokenizer the
forward stage loads (ids, offsets, BOS), or the checks would check something
else. Then: a prompt longer than the context window, a straddled scoring
boundary and a top_k above the vocabulary are refused, naming task and model.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from test_workflow import snakemake, write_config

from conftest import REPO, _fast_tokenizer, digit_tokenizer, make_task, number_tokenizer
from iclprobe.config import load_settings
from iclprobe.forward import encode_prompts
from iclprobe.preflight import PreflightError, RawTokenizer, check_prepared, longest_prompt
from iclprobe.prompts import make_prompts

MIXED = {"function": "x - 20", "x_high": 40, "n_examples": 6, "replicates": 3}


def _prepared(folder, tokenizer, window=1024, vocab=None):
    """A folder with what preflight reads of a prepared model: tokenizer and config."""
    tokenizer.save_pretrained(folder)
    config = {"model_type": "llama", "max_position_embeddings": window}
    config["vocab_size"] = vocab or len(tokenizer)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _settings(tasks: dict, **extra) -> object:
    """Settings for `tasks`; patching is off (its 8 pairs need more x than these tasks have)."""
    raw = {"models": {"m": {"path": "/unused"}}, "tasks": tasks, "patching": {"enabled": False}}
    return load_settings({**raw, **extra})


@pytest.mark.parametrize("make_tokenizer", [digit_tokenizer, number_tokenizer])
def test_raw_tokenizer_encodes_like_the_hf_tokenizer(tmp_path, make_tokenizer):
    hf = make_tokenizer()
    raw = RawTokenizer.from_folder(_prepared(tmp_path, hf))
    prompts = make_prompts(make_task(**MIXED))
    _, expected = encode_prompts(prompts, hf)
    _, got = encode_prompts(prompts, raw)
    assert [(e.input_ids, e.offsets, e.answer_tokens, e.decision) for e in got] == [
        (e.input_ids, e.offsets, e.answer_tokens, e.decision) for e in expected
    ]
    assert longest_prompt(make_task(**MIXED), raw) == max(len(e.input_ids) for e in expected)


@pytest.mark.real_model
def test_raw_tokenizer_encodes_like_smollm2s(smollm2, smollm2_folder):
    _, hf, _ = smollm2
    raw = RawTokenizer.from_folder(smollm2_folder)
    prompts = make_prompts(make_task(**MIXED))
    _, expected = encode_prompts(prompts, hf)
    _, got = encode_prompts(prompts, raw)
    assert [(e.input_ids, e.offsets) for e in got] == [(e.input_ids, e.offsets) for e in expected]


def test_prompt_longer_than_the_window_names_task_model_and_lengths(tmp_path):
    tokenizer = digit_tokenizer()
    _prepared(tmp_path / "m", tokenizer, window=64)
    tasks = {"short": {"function": "x", "x_range": [0, 9], "n_examples": 2}}
    assert check_prepared(_settings(tasks, replicates=2), tmp_path) == ["m"]
    tasks["long_one"] = {"function": "x", "x_range": [0, 99], "n_examples": 20}
    with pytest.raises(
        PreflightError,
        match=r"task 'long_one': the longest prompt is \d+ tokens but model 'm' has a "
        r"context window of 64; lower tasks\.long_one\.n_examples",
    ):
        check_prepared(_settings(tasks, replicates=2), tmp_path)


def test_straddled_boundary_is_found_before_any_job(tmp_path):
    tokenizer = _fast_tokenizer([str(d) for d in range(10)] + [",-", *"(),- "], r",-|\d|\D")
    _prepared(tmp_path / "m", tokenizer)
    tasks = {"neg": {"function": "x - 20", "x_range": [0, 40], "n_examples": 4}}
    with pytest.raises(PreflightError, match=r"task 'neg': .* model 'm' writes ',-' as one"):
        check_prepared(_settings(tasks, template="({x},{y})"), tmp_path)


def test_top_k_above_the_vocabulary_is_refused(tmp_path):
    tokenizer = digit_tokenizer()
    _prepared(tmp_path / "m", tokenizer, vocab=40)
    tasks = {"t": {"function": "x", "x_range": [0, 9], "n_examples": 3}}
    with pytest.raises(PreflightError, match=r"forward\.top_k: 50 is more than the 40 tokens"):
        check_prepared(_settings(tasks, forward={"top_k": 50}), tmp_path)


def test_models_not_prepared_are_left_to_their_jobs(tmp_path):
    tasks = {"t": {"function": "x", "x_range": [0, 9], "n_examples": 3}}
    assert check_prepared(_settings(tasks), tmp_path) == []


def test_a_long_prompt_stops_the_run_in_the_terminal(tmp_path):
    """With the model prepared, the Snakefile's main process finds it: no job starts."""
    _prepared(tmp_path / "resources" / "models" / "m", digit_tokenizer(), window=64)
    (tmp_path / "resources" / "models" / "m" / "iclprobe_source.json").write_text("{}")
    config = {
        "models": {"m": {"path": str(tmp_path / "resources" / "models" / "m")}},
        "tasks": {"long_one": {"function": "x", "x_range": [0, 99], "n_examples": 20}},
        "replicates": 2,
        "patching": {"enabled": False},
    }
    write_config(tmp_path, config)
    (tmp_path / "resources/models/m/model.safetensors").write_bytes(b"")
    run = snakemake(tmp_path, "all")
    assert run.returncode != 0
    assert re.search(
        r"task 'long_one': the longest prompt is \d+ tokens but model 'm' has a context window "
        r"of 64",
        run.stdout + run.stderr,
    )
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


# What the Snakefile imports runs at every parse: every dry run, no-op rerun and cluster job.
HEAVY = ("torch", "transformers", "seaborn", "matplotlib", "accelerate")


def test_the_snakefile_imports_nothing_heavy(tmp_path):
    """Imports every iclprobe module the workflow files import, and runs the parse-time checks."""
    texts = [(REPO / "workflow" / "Snakefile").read_text()]
    texts += [p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    modules = sorted(
        set(re.findall(r"^from (iclprobe[\w.]*) import", "\n".join(texts), re.MULTILINE))
    )
    assert {"iclprobe.sources", "iclprobe.preflight", "iclprobe.config"} <= set(modules)
    folder = _prepared(tmp_path / "models" / "m", digit_tokenizer())
    (folder / "model.safetensors").write_bytes(b"weights")
    code = "\n".join(
        [
            "import sys",
            *(f"import {m}" for m in modules),
            "from iclprobe.config import load_settings",
            "from iclprobe.preflight import check_prepared",
            "from iclprobe.sources import check_source, current_digest",
            f"spec = {{'path': {str(folder)!r}}}",
            "tasks = {'t': {'function': 'x', 'x_range': [0, 9], 'n_examples': 3}}",
            "off = {'enabled': False}",
            "settings = load_settings({'models': {'m': spec}, 'tasks': tasks, 'patching': off})",
            f"assert check_prepared(settings, {str(folder.parent)!r}) == ['m']",
            "check_source(spec)",
            f"current_digest(spec, {str(folder)!r}, {str(tmp_path / 'cache.json')!r})",
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))",
        ]
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_passed_checks_are_not_repeated_until_an_input_changes(tmp_path, monkeypatch):
    _prepared(tmp_path / "m", digit_tokenizer(), window=64)
    tasks = {"t": {"function": "x", "x_range": [0, 9], "n_examples": 3}}
    passed = tmp_path / "passed"
    assert check_prepared(_settings(tasks), tmp_path, passed) == ["m"]
    loads = []
    real = RawTokenizer.from_folder
    monkeypatch.setattr(RawTokenizer, "from_folder", lambda f: loads.append(f) or real(f))
    assert check_prepared(_settings(tasks), tmp_path, passed) == ["m"]
    assert loads == []
    # A longer task is new input: checked, and refused.
    tasks["t"] = {"function": "x", "x_range": [0, 99], "n_examples": 20}
    with pytest.raises(PreflightError, match="context window of 64"):
        check_prepared(_settings(tasks), tmp_path, passed)
    assert len(loads) == 1
    # So is a new config.json (a smaller window) with the old task.
    tasks["t"] = {"function": "x", "x_range": [0, 9], "n_examples": 3}
    _prepared(tmp_path / "m", digit_tokenizer(), window=8)
    with pytest.raises(PreflightError, match="context window of 8"):
        check_prepared(_settings(tasks), tmp_path, passed)
