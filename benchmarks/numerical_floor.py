"""The heads stage's numerical floor against the error it stands for, on a real model.

    .venv/bin/python benchmarks/numerical_floor.py --out benchmarks/results     # ~4 min per replicate

The heads job measures its floor on one unedited row per ablation batch (its log
P against the forward stage's, `iclprobe.floor`). Here every head of the
seed task's last example is also ablated in a plain Hugging Face pass over the
text with one edit hook, and the batched path's error is set beside the
control's deviation: the floor (SAFETY × the control) should exceed every
error. Float32, one thread, the first 2 of 4 replicates, as the default config.
"""

from __future__ import annotations

import json
import time

import common
import numpy as np
import polars as pl
import torch

from iclprobe import heads as stage
from iclprobe.anatomy import anatomy_of
from iclprobe.floor import SAFETY
from iclprobe.forward import encode_prompts, run_forward
from iclprobe.hooks import edit_heads
from iclprobe.models import load_prepared
from iclprobe.prompts import make_prompts


def _plain(model, anatomy, ids, decision, span, layer, head, value) -> float:
    """log P(answer span) from one plain pass over the text with one head edited."""

    def edit(z):  # (B, S, H, D)
        z = z.clone()
        z[:, decision, head] = value
        return z

    with torch.no_grad(), edit_heads(anatomy, layer, edit):
        logits = model(input_ids=torch.tensor([ids[: span[-1]]])).logits[0]  # (S, V)
    logp = logits.log_softmax(-1)
    return float(sum(logp[t - 1, ids[t]] for t in span))


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--task", default="seed_2x_plus_3")
    args = p.parse_args()  # --quick: one replicate, the first 2 layers
    info = common.machine()
    torch.set_num_threads(1)
    model, tokenizer, _ = load_prepared(args.model, dtype=args.dtype, device="cpu")
    anatomy = anatomy_of(model)
    settings = common.default_settings()
    task = settings.tasks[args.task]
    heads = settings.heads
    replicates = heads.replicates_for(task)
    causal = heads.causal_replicates_for(task)[: 1 if args.quick else None]
    example = heads.causal_examples_for(task)[-1]
    prompts = make_prompts(task).filter(pl.col("replicate").is_in(replicates))
    forward = run_forward(prompts, model, tokenizer, model_name="m", task=task)
    reps, encoded = encode_prompts(prompts, tokenizer)
    runs = [
        stage._run_replicate(model, anatomy, r, seq, forward, [example], [example])
        for r, seq in zip(reps, encoded, strict=True)
    ]
    layers = range(1, (2 if args.quick else anatomy.n_layers) + 1)
    per_batch = max(1, heads.batch_rows // anatomy.n_heads)
    results = []
    for rep in runs[: len(causal)]:
        means = stage._leave_one_out_means(runs, rep.replicate, example)
        frame, _, deviation = stage._ablate(model, anatomy, rep, example, means, per_batch)
        ids, decision, span = rep.sequence.input_ids, rep.decision(example), rep.span(example)
        clean = rep.logprob(example)
        started = time.perf_counter()
        errors, effects = [], []
        for layer in layers:
            for head in range(anatomy.n_heads):
                plain = _plain(
                    model, anatomy, ids, decision, span, layer, head, means[layer - 1, head]
                )
                got = frame.filter((pl.col("layer") == layer) & (pl.col("head") == head))
                errors.append(float(np.log(got["ablated_p_correct"][0])) - plain)
                effects.append(plain - clean)
        errors, effects = np.abs(errors), np.abs(effects)
        control = float(deviation.max())
        results.append(
            {
                "replicate": rep.replicate,
                "example": example,
                "heads": len(errors),
                "control_deviation_nats": control,
                "floor_nats": SAFETY * control,
                "max_error_nats": float(errors.max()),
                "median_error_nats": float(np.median(errors)),
                "errors_above_floor": int((errors > SAFETY * control).sum()),
                "effects_within_floor": int((effects <= SAFETY * control).sum()),
                "plain_passes_s": time.perf_counter() - started,
            }
        )
        print(json.dumps(results[-1]), flush=True)
    report = {
        "model": str(args.model),
        "task": args.task,
        "dtype": args.dtype,
        "safety": SAFETY,
        "machine": info,
        "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "numerical_floor.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
