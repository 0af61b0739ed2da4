"""Logit-lens stage throughput against a bare forward pass of the same tokens.

Run after the forward stage has written its table for the task:

    .venv/bin/python benchmarks/lens_throughput.py [--task identity] [--repeats 2]

Times `run_lens` with the config's lens settings, and plain forward passes
(no hooks, one position unembedded) over the same replicate slices the lens
runs. The lens also runs the candidates' trie nodes (one token each per
integer example); the bare-forward time of those is estimated at the bare
forward's tokens/s. Prints one JSON object: seconds, tokens and tokens/s of
each, and the ratio of the stage's time to the bare forward's (target ≤ 2).
Runs alternate and the fastest of `--repeats` counts, which damps the noise
of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
import torch
import yaml

from iclprobe.config import Task, load_settings
from iclprobe.forward import encode_prompts
from iclprobe.integer_lens import candidate_paths
from iclprobe.io import read_metadata, read_table
from iclprobe.lens import LensPlan, run_lens
from iclprobe.models import load_prepared
from iclprobe.trie import build_trie


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="identity")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    settings = load_settings(yaml.safe_load(Path(args.config).read_text()))
    prompts_path = Path("results/prompts", f"{args.task}.parquet")
    forward = read_table(Path("results/forward", args.model, f"{args.task}.parquet"))
    prompts = read_table(prompts_path)
    task = Task.from_params(read_metadata(prompts_path)["task"])
    plan = LensPlan.for_task(settings.lens, task)
    started = time.perf_counter()
    model, tokenizer, _ = load_prepared(Path("resources/models", args.model), "float32", "cpu")
    load_s = time.perf_counter() - started

    # The slices the lens runs: up to the last decision position of the selected examples.
    wanted = sorted(set(plan.replicates) | set(plan.integer_replicates))
    _, encoded = encode_prompts(prompts.filter(pl.col("replicate").is_in(wanted)), tokenizer)
    slices = [
        seq.input_ids[: max(seq.decision[e - 1] for e in plan.examples) + 1] for seq in encoded
    ]
    paths = candidate_paths(tokenizer, task, plan.candidates)
    per_example = len(build_trie(plan.candidates, paths).run.tokens)
    trie_tokens = per_example * len(plan.examples) * len(plan.integer_replicates)
    pass_tokens = sum(len(s) for s in slices)

    bare_s, lens_s = [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        with torch.inference_mode():
            for ids in slices:
                model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1)
        bare_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_lens(forward, prompts, model, tokenizer, task=task, plan=plan)
        lens_s.append(time.perf_counter() - t)
    bare_rate = pass_tokens / min(bare_s)
    total = pass_tokens + trie_tokens
    result = {
        "task": args.task,
        "model_load_s": round(load_s, 2),
        "replicates": len(plan.replicates),
        "integer_replicates": len(plan.integer_replicates),
        "examples": plan.examples,
        "candidates": len(plan.candidates),
        "pass_tokens": pass_tokens,
        "trie_tokens": trie_tokens,
        "trie_tokens_per_example": per_example,
        "bare_forward_s": round(min(bare_s), 2),
        "bare_tokens_per_s": round(bare_rate, 1),
        "lens_s": round(min(lens_s), 2),
        "lens_tokens_per_s": round(total / min(lens_s), 1),
        "lens_over_bare_same_tokens": round(min(lens_s) / (total / bare_rate), 2),
        "all_runs_s": {
            "bare": [round(s, 2) for s in bare_s],
            "lens": [round(s, 2) for s in lens_s],
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
