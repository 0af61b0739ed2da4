"""Scratch copies of the workflow for the benchmarks that run Snakemake.

A scratch folder holds `workflow/` and `config/` copied from the repository
(the config edited by a function), optionally the prepared model (hard links, else a copy)
and nothing under `results/`, so every run starts clean and the repository's
own `results/` and `resources/` are never touched. Snakemake runs as a child
process of this Python (`python -m snakemake`), with the repository's `src/`
first on PYTHONPATH.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import yaml
from common import REPO

MODEL_NAME = "smollm2-135m"


def link_tree(source: Path, dest: Path) -> None:
    """Hard links where the file system allows (no 500 MB copy), else a copy.

    Snakemake replaces outputs by writing new files, so a hard-linked model is
    never modified in place.
    """
    try:
        shutil.copytree(source, dest, copy_function=os.link)
    except OSError:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest)


def make(root: Path, edit: Callable[[dict], None] | None = None, model: Path | None = None):
    """The workflow and the default config, changed in place by `edit(config)`."""
    for part in ("workflow", "config"):
        shutil.copytree(REPO / part, root / part)
    if model is not None:
        link_tree(model, root / "resources" / "models" / MODEL_NAME)
    config_path = root / "config" / "config.yaml"
    config = yaml.safe_load(config_path.read_text())
    if edit is not None:
        edit(config)
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return root


def environment(*front: Path) -> dict:
    """This environment with `front` and the repository's src/ first on PYTHONPATH."""
    env = dict(os.environ)
    parts = [str(p) for p in front] + [str(REPO / "src")]
    if env.get("PYTHONPATH"):
        parts.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


def snakemake(root: Path, *args: str, env: dict | None = None, timeout: float = 3600) -> dict:
    """Run Snakemake in `root` as a process: its wall time, its children's CPU time, output."""
    command = [sys.executable, "-m", "snakemake", "--directory", str(root), *args]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        command,
        check=False,
        cwd=root,
        env=env or environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "returncode": done.returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "stdout": done.stdout,
        "stderr": done.stderr,
    }


def failure(run: dict, what: str) -> str:
    return f"{what} failed (exit {run['returncode']}):\n{run['stderr'][-3000:]}"


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
_RULE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
_JOBID = re.compile(r"^\s+jobid: (\d+)$")
_FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")


def job_times(log_text: str) -> dict[str, dict]:
    """Per rule: jobs, summed and longest job wall seconds, from a Snakemake log.

    Snakemake stamps each job's start and end to the second, so short jobs read
    as 0-1 s; parallel jobs overlap, so the sums exceed the run's wall time.
    """
    now, rule, started = None, None, {}
    per_rule: dict[str, list[float]] = defaultdict(list)
    for line in log_text.splitlines():
        if m := _STAMP.match(line):
            now = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := _RULE.match(line):
            rule = m.group(1)
        elif (m := _JOBID.match(line)) and rule is not None and now is not None:
            started[m.group(1)] = (rule, now)
            rule = None
        elif (m := _FINISHED.match(line)) and m.group(1) in started and now is not None:
            name, start = started.pop(m.group(1))
            per_rule[name].append((now - start).total_seconds())
    return {
        name: {"jobs": len(times), "sum_s": sum(times), "max_s": max(times)}
        for name, times in sorted(per_rule.items())
    }


def last_log(root: Path) -> str:
    logs = sorted((root / ".snakemake" / "log").glob("*.snakemake.log"))
    return logs[-1].read_text() if logs else ""
