"""Benchmark 3: every analysis stage's job, in tokens per second against a bare forward.

Each stage present (`iclprobe.forward`, `.probe`, `.lens`, `.heads`,
`.patching`; a module that is absent, or a target no rule makes, is skipped
with a note) runs as the workflow runs it: `snakemake --cores 1 <its table>`
on the default config in a scratch copy of the workflow, after its inputs
were built. benchmarks/hook/sitecustomize.py instruments the job without
changing the stage: it times the stage's library entry point (`run_<stage>`),
counts the token positions the model's embedding receives during it (every
pass, padding included) and records the job's wall time and peak memory.

The reference is a bare forward in this process: a plain pass per replicate
of the same task at batch 1, one thread, only the last position unembedded.
`time_ratio` = (stage seconds per position) / (bare seconds per token);
target ≤ 2.

    .venv/bin/python benchmarks/stages.py [--quick] [--task seed_2x_plus_3]
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import common
import scratch
import torch

# (stage, module, the table the harness asks Snakemake for)
STAGES = [
    ("forward", "iclprobe.forward", "results/forward/{model}/{task}.parquet"),
    ("probe", "iclprobe.probe", "results/probe/{model}/{task}.parquet"),
    ("lens", "iclprobe.lens", "results/lens/{model}/{task}.parquet"),
    ("heads", "iclprobe.heads", "results/heads/{model}/{task}.parquet"),
    ("patching", "iclprobe.patching", "results/patching/{model}/{task}.parquet"),
]
HOOK = Path(__file__).resolve().parent / "hook"


def rule_of(root: Path, target: str, env: dict) -> str | None:
    """The rule that makes `target`, from Snakemake's summary; None if none does."""
    done = scratch.snakemake(root, "--summary", target, env=env)
    if done["returncode"] != 0:
        return None
    for line in done["stdout"].splitlines():
        fields = line.split("\t")
        if len(fields) > 2 and fields[0] == target:
            return fields[2]
    return None


def run_stage(root: Path, stage: str, module: str, target: str, env: dict) -> dict:
    """Build the stage's inputs, then time its own job alone; the hook's record."""
    rule = rule_of(root, target, env)
    if rule is None:
        return {"skipped": f"no rule makes {target}"}
    built = scratch.snakemake(root, "--cores", "2", target, "--omit-from", rule, env=env)
    if built["returncode"] != 0:
        return {"skipped": scratch.failure(built, "building its inputs")}
    record_path = root / f"bench-{stage}.json"
    hooked = {**env, "ICLPROBE_BENCH_STAGE": module, "ICLPROBE_BENCH_OUT": str(record_path)}
    hooked["PYTHONPATH"] = os.pathsep.join([str(HOOK), env["PYTHONPATH"]])
    done = scratch.snakemake(root, "--cores", "1", "--force", target, env=hooked)
    if done["returncode"] != 0 or not record_path.is_file():
        return {"skipped": scratch.failure(done, "the job")}
    return {"rule": rule, "snakemake_wall_s": done["wall_s"], **json.loads(record_path.read_text())}


def bare_forward(model, seqs, device: str, repeats: int) -> dict:
    """A plain pass per replicate, batch 1, last position unembedded: seconds per token."""

    @torch.inference_mode()
    def run():
        for s in seqs:
            ids = torch.tensor([s.input_ids], device=device)  # (1, S)
            model(input_ids=ids, use_cache=False, logits_to_keep=1)

    run()  # warm-up
    timing = common.measure(run, repeats, device)
    tokens = sum(len(s.input_ids) for s in seqs)
    return {
        "tokens": tokens,
        "s_per_token": timing["wall_s"] / tokens,
        "cpu_s_per_token": timing["cpu_s"] / tokens,
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--task", default="seed_2x_plus_3", help="a task of the default config")
    p.add_argument("--stages", nargs="+", help="only these (default: all present)")
    p.add_argument("--keep", action="store_true", help="keep the scratch workflow")
    args = p.parse_args()
    torch.set_num_threads(1)
    info = common.machine(args.device)

    model, tokenizer, model_info = common.load_model(args.model, args.dtype, args.device)
    replicates = 2 if args.quick else common.default_settings().tasks[args.task].replicates
    task = common.default_task(args.task, replicates=replicates)
    bare = bare_forward(model, common.encode_task(task, tokenizer), args.device, 2)
    bare_rss = common.peak_rss_mb()
    del model

    def edit(config: dict) -> None:
        # Quick: fewer replicates everywhere; the stages' own settings stay the defaults.
        config["forward"].update(device=args.device, dtype=args.dtype)
        config["replicates"] = replicates

    root = Path(tempfile.mkdtemp(prefix="iclprobe-stages-"))
    rows, skipped, records = [], [], {}
    try:
        scratch.make(root, edit, model=args.model)
        env = scratch.environment()
        for stage, module, pattern in STAGES:
            if args.stages and stage not in args.stages:
                continue
            if importlib.util.find_spec(module) is None:
                skipped.append(f"{stage}: module {module} not present")
                continue
            target = pattern.format(model=scratch.MODEL_NAME, task=args.task)
            print(f"stage {stage}: {target}", flush=True)
            record = run_stage(root, stage, module, target, env)
            records[stage] = record
            if "skipped" in record:
                skipped.append(f"{stage}: {record['skipped']}")
                continue
            per_position = record["wall_s"] / max(record["positions"], 1)
            rows.append(
                {
                    "stage": stage,
                    "time_ratio": per_position / bare["s_per_token"],
                    "target": 2.0,
                    "met": common.verdict(per_position / bare["s_per_token"] <= 2.0),
                    "cpu_ratio": record["cpu_s"]
                    / max(record["positions"], 1)
                    / bare["cpu_s_per_token"],
                    "positions": record["positions"],
                    "passes": record["passes"],
                    "stage_s": record["wall_s"],
                    "positions_s": record["positions"] / record["wall_s"],
                    "bare_tokens_s": 1 / bare["s_per_token"],
                    "job_s": record["process_wall_s"],
                    "peak_rss_mb": record["peak_rss_mb"],
                    "bare_rss_mb": bare_rss,
                }
            )
            print(rows[-1], flush=True)
    finally:
        if args.keep:
            print(f"scratch workflow kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    notes = [
        common.loaded_warning(info),
        (
            f"task {args.task}, default stage settings, {replicates} replicates; 1 thread; "
            f"{args.dtype} on {args.device}"
        ),
        (
            "positions: token positions the model's embedding received during the stage's "
            "run_* call (every pass, padding included; a pass over a cached prefix counts only "
            "its new tokens); time_ratio = stage s/position ÷ bare forward s/token"
        ),
        (
            "job_s: the stage job's whole process (start-up, model loading, writing); peak_rss_mb: "
            "its peak resident memory; bare_rss_mb: this process after loading the model and "
            "running the bare forward"
        ),
        *[f"skipped {s}" for s in skipped],
    ]
    common.finish(
        "stages",
        args,
        info,
        [
            common.table(
                "Analysis stages vs a bare forward of the same tokens",
                [
                    "stage",
                    "time_ratio",
                    "target",
                    "met",
                    "cpu_ratio",
                    "positions",
                    "passes",
                    "stage_s",
                    "positions_s",
                    "bare_tokens_s",
                    "job_s",
                    "peak_rss_mb",
                    "bare_rss_mb",
                ],
                rows,
                notes,
            )
        ],
        {"bare_forward": bare, "records": records, "model": model_info},
    )


if __name__ == "__main__":
    main()
