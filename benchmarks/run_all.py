"""Run every CPU benchmark, one process each, and print their tables together.

    .venv/bin/python benchmarks/run_all.py --out benchmarks/results          # ~1 h, 2 cores
    .venv/bin/python benchmarks/run_all.py --quick --out /tmp/bench-quick    # checks it runs

Each benchmark writes `<out>/<name>.json`; this script adds `<out>/summary.md`
(every table in Markdown, for the README) and prints every table again at the
end, headline first. Run it on a quiet machine: the notes of each table say
when the load average was high. benchmarks/gpu.py (benchmark 6) runs
separately, on a machine with CUDA.

  1 single_pass    one pass per replicate vs one per prefix (N = 10, 30, 100)
  2 forward_limit  the forward's FLOP/s vs torch's matmul at the model's shapes
  3 stages         every analysis stage's tokens/s vs a bare forward
  4 workflow       snakemake --cores 4 all from clean, then a no-op rerun
  5 scaling        wall time vs replicates and examples, fitted in tokens
  7 cost           iclprobe.cost's time and memory per stage vs measured, two shapes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common

BENCHMARKS = ["single_pass", "forward_limit", "stages", "workflow", "scaling", "cost"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=common.REPO / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", type=Path, default=common.DEFAULT_MODEL)
    p.add_argument("--only", nargs="+", choices=BENCHMARKS)
    p.add_argument("--skip", nargs="+", choices=BENCHMARKS, default=[])
    args = p.parse_args()
    chosen = [b for b in (args.only or BENCHMARKS) if b not in args.skip]
    args.out.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    # The benchmarks import iclprobe from this checkout, as the workflow's jobs do.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(common.REPO / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )

    started = time.perf_counter()
    status = {}
    for name in chosen:
        command = [sys.executable, str(here / f"{name}.py"), "--out", str(args.out)]
        command += ["--model", str(args.model)] + (["--quick"] if args.quick else [])
        print(f"\n=== {name}: {' '.join(command)}", flush=True)
        begun = time.perf_counter()
        done = subprocess.run(command, check=False, env=env)
        status[name] = {"returncode": done.returncode, "wall_s": time.perf_counter() - begun}

    lines, markdown = [], [f"# Benchmarks ({'quick' if args.quick else 'full'})", ""]
    for name in chosen:
        path = args.out / f"{name}.json"
        if status[name]["returncode"] != 0 or not path.is_file():
            lines.append(f"{name}: FAILED (exit {status[name]['returncode']})")
            markdown.append(f"**{name}: failed** (exit {status[name]['returncode']})\n")
            continue
        result = json.loads(path.read_text())
        machine = result["machine"]
        markdown.append(
            f"## {name}\n\n{machine['cpu']}, {machine['logical_cpus']} CPUs, torch "
            f"{machine['torch']}; load average {machine['load_average_1_5_15']} at start, "
            f"{machine['load_average_at_end']} at end; {status[name]['wall_s']:.0f} s\n"
        )
        for tab in result["tables"]:
            lines.append(common.render_text(tab))
            markdown.append(common.render_markdown(tab) + "\n")
    (args.out / "summary.md").write_text("\n".join(markdown) + "\n")
    print("\n\n=== all benchmarks ===\n")
    print("\n\n".join(lines))
    total = time.perf_counter() - started
    print(f"\n{len(chosen)} benchmarks in {total:.0f} s; tables in {args.out / 'summary.md'}")
    sys.exit(max((s["returncode"] for s in status.values()), default=0) != 0)


if __name__ == "__main__":
    main()
