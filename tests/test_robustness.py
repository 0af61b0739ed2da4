"""Damaged caches are rebuilt, killed runs lose nothing, and results are deterministic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import polars as pl
import pyarrow.parquet as pq
import pytest
from test_workflow import SNAKEFILE, small_config, snakemake, write_config

from conftest import digit_tokenizer, make_task, tiny_llama
from iclprobe.forward import ContextTooLongError, run_forward
from iclprobe.io import (
    FORMAT_VERSION,
    METADATA_KEY,
    StaleCacheError,
    is_valid,
    read_table,
    set_aside_stale,
    write_table,
)
from iclprobe.prompts import make_prompts
from iclprobe.scoring import BATCH_BOUND_NATS


def _table(tmp_path, name="good.parquet"):
    path = tmp_path / name
    write_table(pl.DataFrame({"a": list(range(1000))}), path, {"stage": "test"})
    return path


def test_truncated_foreign_and_old_tables_are_refused_and_set_aside(tmp_path):
    good = _table(tmp_path)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:-100])
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pl.DataFrame({"a": [1]}).to_arrow(), foreign)
    old = tmp_path / "old.parquet"
    table = pl.DataFrame({"a": [1]}).to_arrow()
    meta = json.dumps({"format_version": FORMAT_VERSION - 1})
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: meta}), old)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_text("not parquet")

    expected = {
        truncated: "not a readable Parquet file",
        foreign: "has no iclprobe metadata",
        old: f"format version {FORMAT_VERSION - 1}",
        garbage: "not a readable Parquet file",
    }
    for path, reason in expected.items():
        with pytest.raises(StaleCacheError, match=reason):
            read_table(path)
        assert not is_valid(path)
    moved = set_aside_stale(tmp_path)
    assert sorted(p.name for p, _ in moved) == sorted(p.name + ".stale" for p in expected)
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["good.parquet"]
    assert read_table(good)["a"].to_list() == list(range(1000))


def test_context_window_shorter_than_the_prompt_names_the_task():
    tokenizer = digit_tokenizer()
    model = tiny_llama(len(tokenizer))
    task = make_task(name="long_task", function="x", x_high=99, replicates=1)
    with pytest.raises(ContextTooLongError, match=r"task 'long_task': the longest prompt is"):
        run_forward(make_prompts(task), model, tokenizer, model_name="tiny", max_positions=64)


def test_truncated_cache_in_a_run_is_rebuilt_not_read(tiny_run):
    workdir = tiny_run
    forward = workdir / "results" / "forward" / "m" / "double.parquet"
    original = read_table(forward)
    forward.write_bytes(forward.read_bytes()[:500])
    run = snakemake(workdir, "all")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "not a readable Parquet file" in run.stderr and "it will be rebuilt" in run.stderr
    assert read_table(forward).equals(original)


def _forward_tables(workdir):
    return {
        p.relative_to(workdir).as_posix(): read_table(p)
        for p in sorted((workdir / "results" / "forward").rglob("*.parquet"))
    }


@pytest.mark.real_model
def test_killed_forward_stage_then_rerun_equals_an_uninterrupted_run(tmp_path, smollm2_folder):
    """SIGKILL the whole workflow mid forward pass; the rerun matches a clean run.

    The clean run uses batch size 8 and the killed one batch size 1, so the
    comparison also covers batch sizes: log-probs within the documented bound.
    """
    config = small_config({"path": str(smollm2_folder)}, replicates=6, n_examples=20)
    config["tasks"] = {k: config["tasks"][k] for k in ("identity", "double")}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    write_config(clean, {**config, "forward": {"batch_size": 8, "threads": 1}})
    write_config(killed, {**config, "forward": {"batch_size": 1, "threads": 1}})
    target = "results/surprisal.parquet"
    assert snakemake(clean, target).returncode == 0

    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(killed)]
    proc = subprocess.Popen(
        [*cmd, "--cores", "2", target],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    logs = killed / "logs" / "forward" / "m"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any("scored 2/6" in p.read_text() for p in logs.glob("*.log")):
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    # Whatever the kill left behind, no table that exists is incomplete.
    for path in (killed / "results").rglob("*.parquet"):
        assert is_valid(path), path
    assert len(_forward_tables(killed)) < 2  # the kill landed before both forward passes ended

    # As a user would after a kill: remove Snakemake's stale lock, then rerun.
    assert snakemake(killed, "--unlock").returncode == 0
    rerun = snakemake(killed, target)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for name in ("identity", "double"):
        prompts = f"results/prompts/{name}.parquet"
        assert (clean / prompts).read_bytes() == (killed / prompts).read_bytes()
    a, b = _forward_tables(clean), _forward_tables(killed)
    assert a.keys() == b.keys() and len(a) == 2
    for name in a:
        diff = (a[name]["logprob"] - b[name]["logprob"]).abs().max()
        assert diff <= BATCH_BOUND_NATS, (name, diff)
        assert (
            a[name]
            .drop("logprob", "token_logprobs", "topk_logits", "log_normalizer")
            .equals(b[name].drop("logprob", "token_logprobs", "topk_logits", "log_normalizer"))
        )
