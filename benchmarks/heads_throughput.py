"""Heads-stage cost: attribution and mean-ablation against a bare forward of the same tokens.

Run after the default model is prepared (`snakemake --cores 1 resources/models/smollm2-135m`):

    .venv/bin/python benchmarks/heads_throughput.py [--task identity] [--model …]

Uses the heads settings of config/config.yaml. Prints one JSON object (and writes it with
--out): per part, wall and CPU seconds and tokens/s, and the same for a bare forward pass
(no hooks, last position unembedded) over the same token counts: the attribution's
sequences, and for the ablations the same number of tokens in full-length passes. CPU
seconds are the process's own, so they hold up better than wall time on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import polars as pl
import torch
import yaml

from iclprobe.anatomy import anatomy_of
from iclprobe.config import load_settings
from iclprobe.forward import encode_prompts, run_forward
from iclprobe.heads import run_heads
from iclprobe.models import load_prepared
from iclprobe.prompts import make_prompts


class Clock:
    """Wall and CPU seconds of a block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def part(clock: Clock, tokens: int) -> dict:
    return {
        "tokens": tokens,
        "wall_s": round(clock.wall, 2),
        "cpu_s": round(clock.cpu, 2),
        "tokens_per_cpu_s": round(tokens / clock.cpu, 1),
    }


@torch.inference_mode()
def bare(model, sequences: list[list[int]]) -> Clock:
    with Clock() as clock:
        for ids in sequences:
            model(input_ids=torch.tensor([ids]), logits_to_keep=1)
    return clock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resources/models/smollm2-135m")
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--task", default="identity")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)

    settings = load_settings(yaml.safe_load(Path(args.config).read_text()))
    task, heads = settings.tasks[args.task], settings.heads
    with Clock() as loading:
        model, tokenizer, _ = load_prepared(args.model, dtype="float32", device="cpu")
    replicates = heads.replicates_for(task)
    prompts = make_prompts(task).filter(pl.col("replicate").is_in(replicates))
    forward = run_forward(prompts, model, tokenizer, model_name="m", task=task)
    examples = heads.examples_for(task)
    causal = {
        "causal_examples": heads.causal_examples_for(task),
        "causal_replicates": heads.causal_replicates_for(task),
    }
    common = {"model_name": "m", "examples": examples, "replicates": replicates}

    with Clock() as attribution:
        run_heads(prompts, forward, model, tokenizer, **common)
    with Clock() as everything:
        table = run_heads(
            prompts, forward, model, tokenizer, batch_rows=heads.batch_rows, **common, **causal
        )
    _, encoded = encode_prompts(prompts, tokenizer)
    # The attribution pass reads each replicate up to the last answer token it scores.
    last = max(examples)
    sequences = [e.input_ids[: e.answer_tokens[last - 1][-1]] for e in encoded]
    attribution_tokens = sum(len(s) for s in sequences)
    # Each ablation row runs the decision token and the answer tokens before the last one.
    rows = anatomy_of(model).n_layers * anatomy_of(model).n_heads
    ablation_tokens = sum(
        rows * (e.answer_tokens[ex - 1][-1] - e.decision[ex - 1])
        for rep, e in zip(replicates, encoded, strict=True)
        if rep in causal["causal_replicates"]
        for ex in causal["causal_examples"]
    )
    assert table.filter(pl.col("effect").is_not_null()).height == rows * len(
        causal["causal_replicates"]
    ) * len(causal["causal_examples"])
    bare_attribution = bare(model, sequences)
    repeats = max(1, round(ablation_tokens / attribution_tokens))
    bare_ablation = bare(model, sequences * repeats)
    ablation = Clock()
    ablation.wall = everything.wall - attribution.wall
    ablation.cpu = everything.cpu - attribution.cpu
    report = {
        "task": args.task,
        "examples": examples,
        "replicates": replicates,
        **causal,
        "model_load_s": round(loading.wall, 2),
        "attribution": part(attribution, attribution_tokens),
        "bare_forward_same_tokens": part(bare_attribution, attribution_tokens),
        "ablation": part(ablation, ablation_tokens),
        "bare_forward_as_many_tokens": part(bare_ablation, attribution_tokens * repeats),
        "stage_total": part(everything, attribution_tokens + ablation_tokens),
    }
    report["attribution_cpu_per_token_vs_bare"] = round(
        (attribution.cpu / attribution_tokens) / (bare_attribution.cpu / attribution_tokens), 2
    )
    report["ablation_cpu_per_token_vs_bare"] = round(
        (ablation.cpu / ablation_tokens) / (bare_ablation.cpu / (attribution_tokens * repeats)), 2
    )
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
