"""Probe-stage throughput against a bare forward pass of the same number of tokens.

Run after the default model is prepared (`snakemake --cores 1 resources/models/smollm2-135m`):

    .venv/bin/python benchmarks/probe_throughput.py [--task seed_2x_plus_3] [--batch-size 64 …]

For each batch size, runs the probe stage on one task of the default config
(its ks, the first --replicates replicates) with one torch thread, counts the
tokens it runs through the model (cached contexts, forced query + answer
suffixes, decoding steps), and times a bare forward pass (the forward stage's
batched teacher-forced pass over the task's prompts) over the same number of
tokens right after. Prints one JSON object: wall seconds, tokens, tokens/s and
the ratio of the probe's time per token to the bare forward's (target ≤ 2), and
the tokens a plain pass per query (the whole context again) would have run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from iclprobe.config import load_settings
from iclprobe.forward import encode_prompts
from iclprobe.models import load_prepared
from iclprobe.probe import Counter, run_probe
from iclprobe.prompts import make_prompts
from iclprobe.scoring import score_sequences

REPO = Path(__file__).resolve().parents[1]


def bare_forward(model, tokenizer, encoded, n_tokens: int) -> tuple[float, int]:
    """Seconds to score prompt sequences (batch 8) until at least n_tokens have run."""
    chosen, total = [], 0
    while total < n_tokens:
        for seq in encoded:
            chosen.append(seq)
            total += len(seq.input_ids)
            if total >= n_tokens:
                break
    started = time.perf_counter()
    score_sequences(model, tokenizer, chosen, batch_size=8)
    return time.perf_counter() - started, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resources/models/smollm2-135m")
    parser.add_argument("--task", default="seed_2x_plus_3")
    parser.add_argument("--replicates", type=int, default=1)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[64])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    torch.set_num_threads(1)
    settings = load_settings(yaml.safe_load((REPO / "config/config.yaml").read_text()))
    task = settings.tasks[args.task]
    ks = settings.probe.ks_for(task)
    replicates = list(range(1, args.replicates + 1))
    model, tokenizer, _ = load_prepared(args.model, dtype="float32", device="cpu")
    prompts = make_prompts(task)
    _, encoded = encode_prompts(prompts, tokenizer)

    runs = []
    for batch_size in args.batch_size:
        counter = Counter()
        started = time.perf_counter()
        table = run_probe(
            prompts,
            model,
            tokenizer,
            model_name="bench",
            task=task,
            ks=ks,
            replicates=replicates,
            batch_size=batch_size,
            counter=counter,
        )
        wall = time.perf_counter() - started
        bare_wall, bare_tokens = bare_forward(model, tokenizer, encoded, counter.total)
        # A plain pass per query would rerun the context: k examples' tokens each time.
        plain = sum(
            len(tokenizer(task.context_text(*_first(prompts, r, k)))["input_ids"]) * len(task.xs)
            for r in replicates
            for k in ks
        )
        probe_rate = counter.total / wall
        bare_rate = bare_tokens / bare_wall
        runs.append(
            {
                "batch_size": batch_size,
                "queries": table.height,
                "wall_s": round(wall, 2),
                "tokens": {
                    "prefix": counter.prefix,
                    "suffix": counter.suffix,
                    "decode": counter.decode,
                    "total": counter.total,
                },
                "probe_tokens_per_s": round(probe_rate, 1),
                "bare_forward_tokens_per_s": round(bare_rate, 1),
                "time_per_token_vs_bare": round(bare_rate / probe_rate, 2),
                "plain_pass_context_tokens_avoided": plain,
                "decoded_fraction": round(float(table["decoded"].mean()), 3),
            }
        )
        print(json.dumps(runs[-1]), flush=True)
    result = {"task": task.name, "ks": ks, "replicates": len(replicates), "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def _first(prompts, replicate: int, k: int):
    rows = prompts.filter(prompts["replicate"] == replicate).sort("example").head(k)
    return rows["x"].to_list(), rows["y"].to_list()


if __name__ == "__main__":
    main()
