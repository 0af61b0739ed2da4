"""Benchmark 4: the whole default workflow from clean, and a rerun with nothing to do.

In a scratch copy of the workflow and the default config, with empty
`results/` and `resources/` (so the model is prepared from its GGUF, as on a
fresh clone), `snakemake --cores 4 all` is timed as a process; then the same
command again, which must find nothing to do. Targets on the 2-core machine:
≤ 10 min and ≤ 2 s. Per-rule job times come from Snakemake's log (stamped to
the second).

    .venv/bin/python benchmarks/workflow.py [--quick] [--cores 4]
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import common
import scratch

TARGETS = {"clean": 600.0, "no-op": 2.0}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--cores", default="4")
    p.add_argument(
        "--reuse-model", action="store_true", help="link the prepared model instead of preparing"
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch workflow")
    args = p.parse_args()
    info = common.machine()
    reuse = args.reuse_model or args.quick
    root = Path(tempfile.mkdtemp(prefix="iclprobe-workflow-"))
    rows, raw = [], {}
    try:
        scratch.make(root, quick_config if args.quick else None, args.model if reuse else None)
        env = scratch.environment()
        clean = scratch.snakemake(root, "--cores", args.cores, "all", env=env)
        if clean["returncode"] != 0:
            raise SystemExit(scratch.failure(clean, "the clean run"))
        per_rule = scratch.job_times(scratch.last_log(root))
        again = scratch.snakemake(root, "--cores", args.cores, "all", env=env)
        nothing = "Nothing to be done" in again["stdout"] + again["stderr"]
        for name, run in (("clean", clean), ("no-op", again)):
            rows.append(
                {
                    "run": name,
                    "wall_s": run["wall_s"],
                    "target_s": TARGETS[name],
                    "met": common.verdict(run["wall_s"] <= TARGETS[name]),
                    "cpu_s": run["cpu_s"],
                }
            )
        raw = {"per_rule": per_rule, "noop_nothing_to_do": nothing}
    finally:
        if args.keep:
            print(f"scratch workflow kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    rule_rows = [{"rule": name, **times} for name, times in per_rule.items()]
    notes = [
        common.loaded_warning(info),
        f"snakemake --cores {args.cores} all on the default config"
        + (" (quick: 2 tasks, 2 replicates)" if args.quick else "")
        + ("; model linked in, not prepared" if reuse else "; model prepared from its GGUF"),
        "cpu_s: user + system time of Snakemake and every job it ran",
        None if nothing else "the second run did NOT report 'Nothing to be done'",
    ]
    common.finish(
        "workflow",
        args,
        info,
        [
            common.table(
                "Whole workflow, timed as processes",
                ["run", "wall_s", "target_s", "met", "cpu_s"],
                rows,
                notes,
            ),
            common.table(
                "Jobs per rule in the clean run (Snakemake's log, 1 s resolution)",
                ["rule", "jobs", "sum_s", "max_s"],
                rule_rows,
            ),
        ],
        raw,
    )


def quick_config(config: dict) -> None:
    """Two tasks, two replicates: the same commands in a fraction of the time."""
    config["replicates"] = 2
    config["tasks"] = {name: config["tasks"][name] for name in ("identity", "successor")}


if __name__ == "__main__":
    main()
