"""Patching-stage cost: seconds per job and tokens per second against a bare forward pass.

Run after `snakemake --cores 4 all` has prepared the default model:

    .venv/bin/python benchmarks/patching_throughput.py [--task seed_2x_plus_3] [--pairs 4]

Runs the patching stage of one task with the config's settings (or the
overrides given) on one torch thread, counting every token position the model
computes (padding included), then a bare forward pass (batch 8, full logits)
over the same number of tokens of the task's prompts, before and after, so
that a change in the machine's load shows. Prints one JSON object (and writes
it with --out): wall and CPU seconds, tokens/s of both, and their ratio
(patching's time per token over the bare pass's; the target is at most 2).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import yaml

from iclprobe.config import load_settings
from iclprobe.models import load_prepared
from iclprobe.patching import ZERO_SHOT, run_patching
from iclprobe.prompts import make_prompts
from iclprobe.tokens import tokenize


class _Counter:
    """Token positions computed by every forward pass of the model."""

    def __init__(self, model):
        self.tokens = 0
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += 0 if ids is None else ids.numel()


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


@torch.inference_mode()
def _bare(model, sequences: list[list[int]], n_tokens: int) -> tuple[int, float, float]:
    """A plain forward over whole prompts, batch 8, until n_tokens positions are computed."""
    done, wall, cpu = 0, 0.0, 0.0
    while done < n_tokens:
        for first in range(0, len(sequences), 8):
            batch = torch.tensor(sequences[first : first + 8])  # (B, T)
            _, w, c = _timed(lambda batch=batch: model(input_ids=batch))
            done, wall, cpu = done + batch.numel(), wall + w, cpu + c
            if done >= n_tokens:
                break
    return done, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resources/models/smollm2-135m")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--task", default="seed_2x_plus_3")
    parser.add_argument("--replicates", type=int, help="default: the config's patching.replicates")
    parser.add_argument("--pairs", type=int, help="default: the config's patching.pairs")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    settings = load_settings(yaml.safe_load(Path(args.config).read_text()))
    patching = settings.patching
    task = settings.tasks[args.task]
    target = None if task.patch_target == ZERO_SHOT else settings.tasks[task.patch_target]
    replicates = patching.replicates_for(task)[: args.replicates or None]
    pairs = args.pairs or patching.pairs
    (model, tokenizer, info), load_wall, _ = _timed(
        lambda: load_prepared(args.model, dtype="float32", device="cpu")
    )
    prompts = make_prompts(task)
    # Bare-pass inputs: each replicate's prompt through its context examples (the length of
    # a patching prompt), cut to one length so that no row is padded.
    last = prompts.filter(prompts["example"] == patching.context_examples)
    sequences = [
        tokenize(tokenizer, text[:end])[0]
        for text, end in zip(last["text"], last["answer_end"], strict=True)
    ]
    width = min(len(s) for s in sequences)
    sequences = [s[:width] for s in sequences]

    counter = _Counter(model)
    before_tokens, before_wall, before_cpu = _bare(model, sequences, 2000)
    counter.tokens = 0
    table, wall, cpu = _timed(
        lambda: run_patching(
            prompts,
            None if target is None else make_prompts(target),
            model,
            tokenizer,
            model_name="benchmark",
            task=task,
            target_task=target,
            replicates=replicates,
            pairs=pairs,
            context_examples=patching.context_examples,
        )
    )
    n_tokens = counter.tokens
    bare_tokens, bare_wall, bare_cpu = _bare(model, sequences, n_tokens)
    report = {
        "benchmark": "patching_throughput",
        "model": info["id"],
        "task": task.name,
        "target_context": task.patch_target,
        "replicates": len(replicates),
        "pairs": pairs,
        "layers": int(table["layer"].max()) + 1,
        "rows": table.height,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "load_wall_s": round(load_wall, 2),
        "patching_wall_s": round(wall, 2),
        "patching_cpu_s": round(cpu, 2),
        "patching_tokens": n_tokens,
        "patching_tokens_per_cpu_s": round(n_tokens / cpu, 1),
        "bare_tokens": bare_tokens,
        "bare_cpu_s": round(bare_cpu, 2),
        "bare_tokens_per_cpu_s": round(bare_tokens / bare_cpu, 1),
        "bare_tokens_per_cpu_s_before": round(before_tokens / before_cpu, 1),
        "time_per_token_ratio": round((cpu / n_tokens) / (bare_cpu / bare_tokens), 2),
        "bare_wall_s": round(bare_wall + before_wall, 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
