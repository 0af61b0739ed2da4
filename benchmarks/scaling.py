"""Benchmark 5: how wall time grows with replicates and examples; is it linear in tokens?

Two measurements at points (replicates R, examples N):
- the forward stage's library call (`iclprobe.forward.run_forward`, one
  thread, the configured batch size) on task identity with x in 0…199;
- the whole default workflow (`snakemake --cores 4 all`, model already
  prepared) with every task's `n_examples` set to N, its x range widened to
  0…199 (100 examples need ≥ 100 distinct x) and `replicates` to R.

Each is fitted as wall = a + b · tokens (least squares); b is reported in
seconds per 1000 tokens, with R² and the largest relative residual. A causal
pass costs a per-token constant plus attention growing with the sequence
length, so per-token time at N = 100 is expected above N = 30 by the FLOP
model's ratio (printed alongside); the workflow adds fixed costs (start-up,
model loading, stages with fixed replicate counts) in the intercept a.

    .venv/bin/python benchmarks/scaling.py [--quick] [--skip-workflow]
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import common
import numpy as np
import scratch
import torch

X_RANGE = (0, 199)


def point(text: str) -> tuple[int, int]:
    replicates, examples = text.lower().split("x")
    return int(replicates), int(examples)


def fit(tokens: list[int], walls: list[float]) -> dict:
    """wall = a + b·tokens by least squares; R² and the largest relative residual."""
    x, y = np.asarray(tokens, float), np.asarray(walls, float)
    if len(x) < 2 or np.ptp(x) == 0:
        return {}
    b, a = np.polyfit(x, y, 1)
    predicted = a + b * x
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(((y - predicted) ** 2).sum()) / total if total > 0 else 1.0
    return {
        "s_per_1000_tokens": 1000 * b,
        "intercept_s": a,
        "r2": r2,
        "max_rel_residual": float(np.max(np.abs(y - predicted) / y)),
    }


def identity(replicates: int, examples: int):
    return common.default_task(
        "identity", x_low=X_RANGE[0], x_high=X_RANGE[1], n_examples=examples, replicates=replicates
    )


def forward_points(model, tokenizer, shapes, points, batch_size: int) -> list[dict]:
    from iclprobe.forward import run_forward
    from iclprobe.prompts import make_prompts

    rows = []
    for replicates, examples in points:
        task = identity(replicates, examples)
        prompts = make_prompts(task)
        seqs = common.encode_task(task, tokenizer)
        tokens = sum(len(s.input_ids) for s in seqs)
        timing = common.measure(
            lambda p=prompts, t=task: run_forward(
                p, model, tokenizer, model_name="bench", task=t, batch_size=batch_size
            ),
            1,
        )
        flops = common.sequence_flops(shapes, seqs)
        rows.append(
            {
                "replicates": replicates,
                "examples": examples,
                "tokens": tokens,
                "wall_s": timing["wall_s"],
                "cpu_s": timing["cpu_s"],
                "ms_per_token": 1000 * timing["wall_s"] / tokens,
                "mflop_per_token": flops / tokens / 1e6,
            }
        )
        print(rows[-1], flush=True)
    return rows


def workflow_config(replicates: int, examples: int, quick: bool):
    def edit(config: dict) -> None:
        config["replicates"] = replicates
        if quick:
            config["tasks"] = {k: config["tasks"][k] for k in ("identity", "successor")}
        for spec in config["tasks"].values():
            spec.update(n_examples=examples, x_range=list(X_RANGE))

    return edit


def workflow_tokens(root: Path, tokenizer) -> int:
    """Forward tokens of every task in a scratch config."""
    import yaml

    from iclprobe.config import load_settings

    settings = load_settings(yaml.safe_load((root / "config" / "config.yaml").read_text()))
    return sum(
        len(s.input_ids)
        for task in settings.tasks.values()
        for s in common.encode_task(task, tokenizer)
    )


def workflow_points(args, tokenizer, points) -> list[dict]:
    rows = []
    for replicates, examples in points:
        root = Path(tempfile.mkdtemp(prefix="iclprobe-scaling-"))
        try:
            scratch.make(root, workflow_config(replicates, examples, args.quick), args.model)
            tokens = workflow_tokens(root, tokenizer)
            run = scratch.snakemake(root, "--cores", args.cores, "all")
            if run["returncode"] != 0:
                raise SystemExit(scratch.failure(run, f"the workflow at {replicates}x{examples}"))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows.append(
            {
                "replicates": replicates,
                "examples": examples,
                "forward_tokens": tokens,
                "wall_s": run["wall_s"],
                "cpu_s": run["cpu_s"],
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--forward-points", nargs="+", type=point, help="RxN (default 10x30 40x30 …)")
    p.add_argument("--workflow-points", nargs="+", type=point, help="RxN (default 10x30 …)")
    p.add_argument("--skip-workflow", action="store_true")
    p.add_argument("--cores", default="4")
    args = p.parse_args()
    fwd = args.forward_points or (
        [(2, 10), (4, 10), (2, 20)]
        if args.quick
        else [(10, 30), (40, 30), (160, 30), (10, 100), (40, 100)]
    )
    wf = args.workflow_points or (
        [(2, 10), (4, 10)] if args.quick else [(10, 30), (40, 30), (160, 30), (10, 100)]
    )
    torch.set_num_threads(1)
    info = common.machine()
    model, tokenizer, _ = common.load_model(args.model, args.dtype, args.device)
    shapes = common.Shapes.of(model.config)
    batch_size = common.default_settings().forward.batch_size

    forward_rows = forward_points(model, tokenizer, shapes, fwd, batch_size)
    del model
    workflow_rows = [] if args.skip_workflow else workflow_points(args, tokenizer, wf)

    fits = [
        {
            "measured": "forward stage",
            **fit([r["tokens"] for r in forward_rows], [r["wall_s"] for r in forward_rows]),
        },
    ]
    if workflow_rows:
        fits.append(
            {
                "measured": "whole workflow",
                **fit(
                    [r["forward_tokens"] for r in workflow_rows],
                    [r["wall_s"] for r in workflow_rows],
                ),
            }
        )
    by_n = {}
    for r in forward_rows:
        by_n.setdefault(r["examples"], []).append(r)
    per_n = [
        {
            "examples": n,
            "ms_per_token": min(r["ms_per_token"] for r in rows),
            "mflop_per_token": rows[0]["mflop_per_token"],
        }
        for n, rows in sorted(by_n.items())
    ]
    notes = [
        common.loaded_warning(info),
        f"forward: task identity, x in {X_RANGE[0]}…{X_RANGE[1]}, batch {batch_size}, 1 thread; "
        f"workflow: every task at x in {X_RANGE[0]}…{X_RANGE[1]}, --cores {args.cores}, model "
        "prepared beforehand" + (" (quick: 2 tasks)" if args.quick else ""),
        (
            "linear in tokens when R² ≈ 1 and the per-token time grows with N no faster than "
            "mflop_per_token (attention's share grows with the sequence length)"
        ),
    ]
    common.finish(
        "scaling",
        args,
        info,
        [
            common.table(
                "Scaling fits: wall = a + b·tokens",
                ["measured", "s_per_1000_tokens", "r2", "max_rel_residual", "intercept_s"],
                fits,
                notes,
            ),
            common.table(
                "Forward stage per point",
                ["replicates", "examples", "tokens", "wall_s", "cpu_s", "ms_per_token"],
                forward_rows,
            ),
            common.table(
                "Forward stage: time and useful FLOPs per token by sequence length",
                ["examples", "ms_per_token", "mflop_per_token"],
                per_n,
            ),
            common.table(
                "Whole workflow per point",
                ["replicates", "examples", "forward_tokens", "wall_s", "cpu_s"],
                workflow_rows,
            ),
        ],
        {},
    )


if __name__ == "__main__":
    main()
