"""The SLURM profile, run against a real scheduler.

Needs a running cluster: `sudo tests/slurm/start_cluster.sh` starts a one-node
one (slurmctld, slurmd, slurmdbd on MariaDB, munge) on this machine. Where no
cluster answers, as on the CI machine, these tests are skipped and say why.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import polars as pl
import pytest
from test_workflow import expected_outputs, planned_jobs, small_config, snakemake, write_config

from conftest import REPO

PROFILE = REPO / "workflow" / "profiles" / "slurm"
# Poll often: the plugin's defaults (40 s before the first check) suit real
# clusters but would make a test of a few short jobs take many minutes.
FAST_POLLING = [
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--seconds-between-status-checks",
    "2",
]


def _cluster_is_up() -> bool:
    if shutil.which("sinfo") is None or shutil.which("sacct") is None:
        return False
    try:
        run = subprocess.run(
            ["sinfo", "-h", "-o", "%a %T"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    idle = re.search(r"^up (idle|mixed)", run.stdout, re.MULTILINE)
    return run.returncode == 0 and idle is not None


pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not _cluster_is_up(),
        reason="no SLURM cluster answers; start one with `sudo tests/slurm/start_cluster.sh`",
    ),
]


def test_slurm_profile_runs_every_job_on_the_cluster(tmp_path, tiny_llama_folder):
    """Every rule but `all` becomes a SLURM job, and the numbers equal a local run."""
    config = small_config({"path": str(tiny_llama_folder)})
    config["tasks"] = {"identity": config["tasks"]["identity"]}
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for workdir in (local, cluster):
        write_config(workdir, config)
    assert snakemake(local, "all").returncode == 0

    run = snakemake(cluster, "--workflow-profile", str(PROFILE), *FAST_POLLING, "all")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    for name in expected_outputs("m", ["identity"]):
        assert (cluster / name).is_file(), name

    # The scheduler's own accounting saw every job of this run finish.
    run_id = re.search(r"SLURM run ID: ([0-9a-f-]{36})", log).group(1)
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", log))
    accounting = subprocess.run(
        ["sacct", "-X", "--parsable2", "--noheader", "--name", run_id, "--format=JobIdRaw,State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    states = dict(line.split("|") for line in accounting.splitlines())
    rules = {"prepare_model", "prompts", "forward", "surprisal", "bayes"}
    rules |= {"surprisal_table", "bayes_table", "task_figures", "cross_figures"}
    assert len(submitted) == len(rules)
    assert {states[job] for job in submitted} == {"COMPLETED"}

    for table in ("forward/m/identity", "bayes/m/identity"):
        here = pl.read_parquet(cluster / "results" / f"{table}.parquet")
        there = pl.read_parquet(local / "results" / f"{table}.parquet")
        assert here.equals(there), table
    assert planned_jobs(cluster) == {}
