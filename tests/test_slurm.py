"""The SLURM profile, run against a real scheduler.

Needs a running cluster: `sudo tests/slurm/start_cluster.sh` starts a one-node
one (slurmctld, slurmd, slurmdbd on MariaDB, munge) on this machine. Where no
cluster answers these tests are skipped and say why, unless
ICLPROBE_REQUIRE_SLURM=1 (set by .ci/run, which starts the cluster): then they
fail with the reason, so CI cannot pass without having run them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter

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
REQUIRED = os.environ.get("ICLPROBE_REQUIRE_SLURM") == "1"


def why_no_cluster() -> str | None:
    """None when a SLURM cluster answers with a usable node, else the reason."""
    missing = [tool for tool in ("sinfo", "sacct") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH"
    try:
        run = subprocess.run(
            ["sinfo", "-h", "-o", "%a %T"], capture_output=True, text=True, timeout=15, check=False
        )
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 15 s"
    if run.returncode != 0:
        return f"sinfo failed: {run.stderr.strip()}"
    if re.search(r"^up (idle|mixed)", run.stdout, re.MULTILINE) is None:
        return f"no partition is up with an idle node (sinfo: {run.stdout.strip()!r})"
    return None


pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def cluster_missing() -> str | None:
    """Asked once per session, and only when a SLURM test runs: a deselected or merely
    collected test module never waits for `sinfo` (up to 15 s without a controller)."""
    return why_no_cluster()


@pytest.fixture(autouse=True)
def _cluster(cluster_missing):
    if cluster_missing is None:
        return
    if REQUIRED:
        pytest.fail(f"ICLPROBE_REQUIRE_SLURM=1 but no SLURM cluster answers: {cluster_missing}")
    pytest.skip(
        f"no SLURM cluster answers ({cluster_missing}); "
        "start one with `sudo tests/slurm/start_cluster.sh`"
    )


def _accounting(run_id: str) -> dict[str, str]:
    """SLURM job id -> state, from the scheduler's accounting, for one Snakemake run."""
    accounting = subprocess.run(
        ["sacct", "-X", "--parsable2", "--noheader", "--name", run_id, "--format=JobIdRaw,State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("|") for line in accounting.splitlines())


def test_slurm_profile_runs_every_job_on_the_cluster(tmp_path, tiny_llama_folder):
    """Every job but `all` becomes a SLURM job, and every table equals a local run's."""
    config = small_config({"path": str(tiny_llama_folder)})
    config["tasks"] = {"identity": config["tasks"]["identity"]}
    local, cluster = tmp_path / "local", tmp_path / "cluster"
    for workdir in (local, cluster):
        write_config(workdir, config)
    # Every stage the config enables, so a new stage's rule is run on the cluster too.
    planned = planned_jobs(cluster)
    assert {"prepare_model", "forward", "bayes", "cross_figures"} <= set(planned)
    assert snakemake(local, "all").returncode == 0

    run = snakemake(cluster, "--workflow-profile", str(PROFILE), *FAST_POLLING, "all")
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    for name in expected_outputs("m", ["identity"]):
        assert (cluster / name).is_file(), name

    # One SLURM job per planned job (`all` runs in Snakemake's own process), and
    # the scheduler's accounting saw every one of them finish.
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", log))
    on_nodes = {rule: count for rule, count in planned.items() if rule != "all"}
    assert Counter(submitted.values()) == on_nodes, submitted
    run_id = re.search(r"SLURM run ID: ([0-9a-f-]{36})", log).group(1)
    assert _accounting(run_id) == dict.fromkeys(submitted, "COMPLETED")

    tables = sorted(path.relative_to(local) for path in (local / "results").rglob("*.parquet"))
    assert len(tables) >= 5, tables
    for table in tables:
        assert pl.read_parquet(cluster / table).equals(pl.read_parquet(local / table)), table
    assert planned_jobs(cluster) == {}


def test_a_job_that_fails_on_the_cluster_fails_the_run_and_is_named(tmp_path, tiny_llama_folder):
    """Weights cut short pass the check before any job (the file is there) but fail on the node."""
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_llama_folder, broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:1000])
    config = small_config({"path": str(broken)})
    config["tasks"] = {"identity": config["tasks"]["identity"]}
    workdir = tmp_path / "cluster"
    write_config(workdir, config)

    run = snakemake(workdir, "--workflow-profile", str(PROFILE), *FAST_POLLING, "all")
    log = run.stdout + run.stderr
    assert run.returncode != 0, log[-3000:]
    # SLURM job id per rule, from "... submitted with SLURM jobid 2 (log: .../rule_prepare_model/...".
    submitted = dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/rule_(\w+)/", log))
    by_rule = {rule: job for job, rule in submitted.items()}
    # Nothing that needs the model ran (the ideal learner needs only the prompts).
    assert set(by_rule) <= {"prepare_model", "prompts", "ideal"}, submitted
    # Snakemake names the failed job: its rule, output, rule log and SLURM job id.
    errors = re.findall(
        r"^Error in rule (\w+):\n(.*?)\n    external_jobid: (\d+)$", log, re.MULTILINE | re.DOTALL
    )
    assert [(rule, job) for rule, _, job in errors] == [("prepare_model", by_rule["prepare_model"])]
    details = errors[0][1]
    assert f"SLURM-job '{by_rule['prepare_model']}' failed, SLURM status is: 'FAILED'" in details
    assert "output: resources/models/m\n" in details and "logs/prepare_model/m.log" in details
    # The scheduler's accounting agrees: that job failed, the prompts job did not.
    run_id = re.search(r"SLURM run ID: ([0-9a-f-]{36})", log).group(1)
    expected = {
        job: "FAILED" if rule == "prepare_model" else "COMPLETED" for job, rule in submitted.items()
    }
    assert _accounting(run_id) == expected
    # It failed on the node for the real reason: the rule's log holds the load error.
    rule_log = (workdir / "logs" / "prepare_model" / "m.log").read_text()
    assert "SafetensorError" in rule_log, rule_log[-2000:]
    assert not (workdir / "resources" / "models" / "m").exists()
