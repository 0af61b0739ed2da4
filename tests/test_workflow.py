"""The whole workflow, run by the real `snakemake` in a temporary folder.

A tiny random Llama in a local folder keeps the DAG tests fast; one test runs
every stage on the real SmolLM2 and checks the science: the identity task is
learned, its shuffled control is not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from conftest import REPO, SMOLLM2, complete_tiny_run, digit_tokenizer, tiny_llama
from iclprobe.io import read_metadata, read_table

SNAKEFILE = REPO / "workflow" / "Snakefile"
FIGURES = [
    "lm-surprisal",
    "lm-prior",
    "simulated-surprisal",
    "simulated-prior",
    "cumulative-information",
]
ANSWER_FIGURES = ["c_by_model_and_task", "c_constancy", "ideal_information"]


def small_config(model: dict, replicates: int = 2, n_examples: int = 6) -> dict:
    return {
        "models": {"m": model},
        "tasks": {
            "identity": {"function": "x", "x_range": [0, 99], "n_examples": n_examples},
            "double": {"function": "2*x", "x_range": [0, 40], "n_examples": n_examples},
            "double_shuffled": {
                "function": "2*x",
                "x_range": [0, 40],
                "n_examples": n_examples,
                "control": "shuffled",
            },
        },
        "replicates": replicates,
        "forward": {"batch_size": 2, "threads": 2},
        "bayes": {"n_boot": 20},
    }


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir)]
    return subprocess.run(
        [*cmd, "--cores", "2", *args], capture_output=True, text=True, check=False, env=env
    )


def planned_jobs(workdir: Path, env: dict | None = None) -> dict[str, int]:
    """Rule -> job count of a dry run (Snakemake's 'Job stats' table)."""
    run = snakemake(workdir, "--dry-run", "all", env=env)
    assert run.returncode == 0, run.stderr
    text = run.stdout + run.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:")[1].split("Reasons:")[0]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.MULTILINE))
    counts.pop("total", None)
    return {rule: int(n) for rule, n in counts.items()}


def expected_outputs(model: str, tasks: list[str]) -> list[str]:
    files = ["results/surprisal.parquet", "results/bayes.parquet", "results/ideal.parquet"]
    files += ["results/c_constancy.parquet", "results/c_constancy_pairs.parquet"]
    files += ["results/answers.rst"]
    files += [f"results/figures/{f}.png" for f in ANSWER_FIGURES]
    for task in tasks:
        files += [
            f"results/ideal/{task}.parquet",
            f"results/prompts/{task}.parquet",
            f"results/forward/{model}/{task}.parquet",
            f"results/surprisal/{model}/{task}.parquet",
            f"results/bayes/{model}/{task}.parquet",
        ]
        files += [f"results/figures/{model}/{task}/{f}.png" for f in FIGURES]
    return files


def test_workflow_end_to_end_then_nothing_to_do(tiny_run):
    for name in expected_outputs("m", ["identity", "double", "double_shuffled"]):
        assert (tiny_run / name).is_file(), name
    surprisal = read_table(tiny_run / "results" / "surprisal.parquet")
    required = ["model", "task", "replicate", "example", "x", "y", "n_answer_tokens", "logprob"]
    required += ["surprisal_nats", "surprisal_bits", "cumulative_bits"]
    assert set(required) <= set(surprisal.columns)
    assert surprisal.height == 3 * 2 * 6
    double = surprisal.filter(pl.col("task") == "double")
    assert double["control_task"].unique().to_list() == ["double_shuffled"]
    assert double["control_surprisal_bits_mean"].is_not_null().all()
    bayes = read_table(tiny_run / "results" / "bayes.parquet")
    assert {"model", "task", "c", "theta0", "loss", "c_lo", "c_hi"} <= set(bayes.columns)
    assert bayes.height == 3 * 2  # three tasks, two fitting methods
    double_fits = bayes.filter(pl.col("task") == "double")
    assert double_fits["control_task"].to_list() == ["double_shuffled"] * 2
    assert double_fits["c_differs_from_control"].dtype == pl.Boolean
    meta = read_metadata(tiny_run / "results" / "forward" / "m" / "identity.parquet")
    assert meta["model"]["kind"] == "path" and meta["model"]["dtype"] == "float32"
    assert meta["task"]["template"] == "({x}, {y})" and "torch" in meta["versions"]
    # The combined tables carry each (model, task)'s provenance, as the README says.
    for combined in ("surprisal", "bayes"):
        inputs = read_metadata(tiny_run / "results" / f"{combined}.parquet")["inputs"]
        assert sorted(inputs["m"]) == ["double", "double_shuffled", "identity"]
        assert inputs["m"]["double"]["model"]["source_digest"] == meta["model"]["source_digest"]
        assert inputs["m"]["double"]["task"]["function"] == "2*x"
    # The ideal learner saw the model's prompts; the model's excess is measured against it.
    ideal = read_table(tiny_run / "results" / "ideal.parquet")
    assert ideal.height == surprisal.height
    np.testing.assert_allclose(
        ideal["excess_cumulative_bits"].to_numpy(),
        (ideal["cumulative_bits"] - ideal["ideal_cumulative_bits"]).to_numpy(),
    )
    assert ideal["family_size"].unique().to_list() == [21 * 201]  # the schema's grid
    # Is c a constant? Every (task, method) is listed; the random model learns nothing.
    units = read_table(tiny_run / "results" / "c_constancy.parquet")
    assert units.height == 3 * 2 and not units["in_verdict"].any()
    assert units["excluded_because"].is_not_null().all()
    answers = (tiny_run / "results" / "answers.rst").read_text()
    assert "no task is learned with an informative fit" in answers
    assert "``double`` is not learned" in answers
    # Each rule logged to its own file; the forward pass logged its progress.
    assert "scored 2/2 sequences" in (tiny_run / "logs/forward/m/identity.log").read_text()
    assert planned_jobs(tiny_run) == {}


def test_changing_one_task_reruns_only_that_task(tiny_run):
    config = yaml.safe_load((tiny_run / "config" / "config.yaml").read_text())
    config["tasks"]["identity"]["function"] = "x + 1"
    write_config(tiny_run, config)
    jobs = planned_jobs(tiny_run)
    per_task = {"prompts", "forward", "surprisal", "bayes", "task_figures"}
    assert {rule: jobs[rule] for rule in per_task} == dict.fromkeys(per_task, 1)
    assert "prepare_model" not in jobs
    # The batch size changes speed, not results: nothing reruns.
    config["tasks"]["identity"]["function"] = "x"
    config["forward"]["batch_size"] = 1
    write_config(tiny_run, config)
    assert planned_jobs(tiny_run) == {}


def test_new_weights_in_a_path_folder_rerun_preparation_and_everything_after(
    tmp_path, tiny_llama_folder
):
    # Its own run, as it rewrites the model folder the run was made from; the analysis
    # stages hang off the same prepared model as the forward pass, so they are left out.
    tiny_run = complete_tiny_run(tmp_path / "run", tiny_llama_folder, stages=False)
    recorded = json.loads((tiny_run / "resources/models/m/iclprobe_source.json").read_text())
    meta = read_metadata(tiny_run / "results" / "forward" / "m" / "identity.parquet")
    assert meta["model"]["source_digest"] == recorded["source_digest"]
    os.utime(tiny_llama_folder / "model.safetensors")  # touched, same content
    assert planned_jobs(tiny_run) == {}
    tiny_llama(len(digit_tokenizer()), seed=1).save_pretrained(tiny_llama_folder)
    jobs = planned_jobs(tiny_run)
    assert jobs["prepare_model"] == 1 and jobs["forward"] == 3 and jobs["bayes"] == 3
    # Once prepared, the source is no longer needed: its recorded digest stands.
    assert snakemake(tiny_run, "all").returncode == 0
    shutil.rmtree(tiny_llama_folder)
    assert planned_jobs(tiny_run) == {}


def test_editing_library_code_reruns_the_rules_that_use_it(tiny_run, tmp_path):
    """A copy of the package, first on the path, stands in for a developer's edit."""
    lib = tmp_path / "lib"
    shutil.copytree(REPO / "src" / "iclprobe", lib / "iclprobe")
    # iclprobe.config finds the schema (the defaults) two folders above the package.
    shutil.copytree(REPO / "workflow" / "schemas", tmp_path / "workflow" / "schemas")
    env = {**os.environ, "PYTHONPATH": str(lib)}
    assert planned_jobs(tiny_run, env) == {}, "an identical copy changes nothing"

    plots = lib / "iclprobe" / "plots" / "learning.py"
    plots.write_text(plots.read_text() + "\n# a comment reruns nothing\n")
    assert planned_jobs(tiny_run, env) == {}

    plots.write_text(plots.read_text() + "\nEDITED = True\n")
    assert planned_jobs(tiny_run, env) == {"task_figures": 3, "cross_figures": 1, "all": 1}

    surprisal = lib / "iclprobe" / "surprisal.py"
    surprisal.write_text(surprisal.read_text() + "\nEDITED = True\n")
    jobs = planned_jobs(tiny_run, env)
    assert "forward" not in jobs and "prompts" not in jobs
    assert jobs["surprisal"] == 3 and jobs["bayes"] == 3 and jobs["task_figures"] == 3


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus_key": 1}, r"bogus_key"),
        ({"tasks": {"t": {"function": "x", "x_range": [0, 3], "n_examples": 9}}}, r"n_examples: 9"),
        ({"tasks": {"t": {"function": "y", "x_range": [0, 9], "n_examples": 2}}}, r"name 'y'"),
        ({"models": {"m": {"path": "/no/such/folder"}}}, r"models\.m: model folder .* not exist"),
        (
            {"models": {"m": {"gguf": {"package": "no_such_pkg", "file": "a.gguf"}}}},
            r"models\.m: Python package 'no_such_pkg' is not installed; install it with",
        ),
    ],
)
def test_bad_config_fails_before_any_job(tmp_path, tiny_llama_folder, change, message):
    """The message reaches the terminal, not only a job's log, and nothing runs."""
    config = {**small_config({"path": str(tiny_llama_folder)}), **change}
    write_config(tmp_path, config)
    run = snakemake(tmp_path, "all")
    assert run.returncode != 0
    assert re.search(message, run.stdout + run.stderr)
    assert not (tmp_path / "results").exists()


def test_a_config_file_that_is_not_yaml_is_named_with_its_line(tmp_path):
    """Snakemake's own message ("Config file is not valid JSON or YAML") names neither."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "models:\n  m: {path: /nowhere}\ntasks:\n  t: {function: x, x_range: [0, 9]\n  u: 1\n"
    )
    run = snakemake(tmp_path, "--dry-run", "all")
    assert run.returncode != 0
    assert re.search(
        r"config/config\.yaml: not valid YAML: line 5, column \d+: .*flow mapping that starts on "
        r"line 4",
        run.stdout + run.stderr,
    ), run.stderr[-2000:]


def test_unreachable_hub_fails_before_any_job(tmp_path):
    """A hub id that is neither cached nor downloadable stops the run in seconds."""
    write_config(tmp_path, small_config({"hf": "no-such-org/no-such-model"}))
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    for name in ("HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(name, None)
    run = snakemake(tmp_path, "all", env=env)
    assert run.returncode != 0
    assert re.search(
        r"models\.m: cannot reach http://127\.0\.0\.1:9 to download hub id 'no-such-org/",
        run.stdout + run.stderr,
    )
    assert not (tmp_path / "results").exists()


@pytest.mark.real_model
def test_real_model_workflow_learns_identity_not_the_shuffled_control(tmp_path):
    workdir = tmp_path / "real"
    config = small_config(SMOLLM2, replicates=3, n_examples=16)
    config["models"] = {"smollm2": SMOLLM2}
    # Every analysis stage runs for real, on a share of its defaults: their numbers are
    # checked against plain Hugging Face passes in their own tests.
    config["probe"] = {"ks": [0, 3]}
    config["lens"] = {"examples": [1, "last"], "integers": {"replicates": 1}}
    config["heads"] = {"examples": ["last"]}
    config["patching"] = {"pairs": 2, "context_examples": 5}
    write_config(workdir, config)
    run = snakemake(workdir, "all")
    assert run.returncode == 0, run.stderr[-3000:]
    for name in expected_outputs("smollm2", ["identity", "double", "double_shuffled"]):
        assert (workdir / name).is_file(), name
    surprisal = read_table(workdir / "results" / "surprisal.parquet")
    late = (
        surprisal.filter(pl.col("example") > 10)
        .group_by("task")
        .agg(pl.col("surprisal_nats").mean())
    )
    nats = dict(late.iter_rows())
    assert nats["identity"] < 0.5  # learned: measured ≈ 0.2 nats
    assert nats["double_shuffled"] > 2.0  # no rule: measured ≈ 4 nats
    bayes = read_table(workdir / "results" / "bayes.parquet")
    identity = bayes.filter(pl.col("task") == "identity", pl.col("method") == "prob_mse")
    assert identity["c"][0] > 0.5  # belief in the rule grows
