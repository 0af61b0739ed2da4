"""Forward-stage throughput: tokens per second by batch size and torch threads.

Run after `snakemake --cores 4 all` has prepared the default model:

    .venv/bin/python benchmarks/forward_throughput.py [--model resources/models/smollm2-135m]

Prints one JSON object (and writes it with --out): tokens/s, wall seconds and
peak resident memory per setting, plus the largest log-prob difference from
batch size 1 at the same thread count (0.0 means batching changed nothing).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch

from iclprobe.config import Task, with_defaults
from iclprobe.forward import encode_prompts
from iclprobe.models import load_prepared
from iclprobe.prompts import make_prompts
from iclprobe.scoring import score_sequences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resources/models/smollm2-135m")
    parser.add_argument("--replicates", type=int, default=8)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()

    model, tokenizer, info = load_prepared(args.model, dtype="float32", device="cpu")
    raw = with_defaults({"models": {}, "tasks": {}})
    task = Task(
        "seed_2x_plus_3",
        "2*x + 3",
        0,
        50,
        30,
        args.replicates,
        0,
        raw["template"],
        raw["separator"],
    )
    _, encoded = encode_prompts(make_prompts(task), tokenizer)
    n_tokens = sum(len(e.input_ids) for e in encoded)

    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        baseline = None
        for batch_size in (1, 8):
            started = time.perf_counter()
            scores = score_sequences(model, tokenizer, encoded, batch_size=batch_size)
            wall = time.perf_counter() - started
            logprobs = torch.tensor([s.logprob for seq in scores for s in seq])
            baseline = logprobs if baseline is None else baseline
            runs.append(
                {
                    "threads": threads,
                    "batch_size": batch_size,
                    "tokens": n_tokens,
                    "wall_s": round(wall, 3),
                    "tokens_per_s": round(n_tokens / wall, 1),
                    "max_abs_logprob_diff_vs_batch_1": float((logprobs - baseline).abs().max()),
                }
            )
    report = {
        "benchmark": "forward_throughput",
        "model": info["id"],
        "machine": platform.machine(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "runs": runs,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
