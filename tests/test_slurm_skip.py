"""The SLURM tests ask the scheduler only when they run, once per session.

A fake `sinfo` on PATH records each call and answers as a cluster without a
controller does; pytest runs in a subprocess against tests/test_slurm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.fixture
def fake_slurm(tmp_path):
    """A PATH whose sinfo logs its calls to a file and fails; sacct exists."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "sinfo-calls"
    bin_dir.mkdir()
    (bin_dir / "sinfo").write_text(
        f"#!/bin/sh\necho called >> {calls}\necho 'slurm_load_partitions: Unable to contact "
        "slurm controller' >&2\nexit 1\n"
    )
    (bin_dir / "sacct").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sinfo", "sacct"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("ICLPROBE_REQUIRE_SLURM", None)
    return env, calls


def _pytest(env, *args):
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_slurm.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)


def _calls(calls) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_collecting_or_deselecting_the_slurm_tests_does_not_ask_the_scheduler(fake_slurm):
    env, calls = fake_slurm
    collected = _pytest(env, "--collect-only", "-q")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert "2 tests collected" in collected.stdout
    deselected = _pytest(env, "-q", "-m", "not slurm")
    assert "2 deselected" in deselected.stdout, deselected.stdout
    assert _calls(calls) == 0


def test_without_a_cluster_the_tests_skip_after_one_question_or_fail_when_required(fake_slurm):
    env, calls = fake_slurm
    run = _pytest(env, "-q", "-rs", "-m", "slurm")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 skipped" in run.stdout
    assert "sinfo failed: slurm_load_partitions: Unable to contact slurm controller" in run.stdout
    assert _calls(calls) == 1  # one question for the session, not one per test
    required = _pytest({**env, "ICLPROBE_REQUIRE_SLURM": "1"}, "-q", "-m", "slurm")
    assert required.returncode != 0
    assert "ICLPROBE_REQUIRE_SLURM=1 but no SLURM cluster answers" in required.stdout
