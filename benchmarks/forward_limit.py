"""Benchmark 2: the forward stage against the machine's own limit, and what moves it.

The limit is torch's matmul rate at the model's own shapes, measured in the
same run: every linear layer of one block, (tokens × in) @ (in × out) as
`F.linear` computes it, at the token counts the forward stage feeds it (one
replicate, and a batch of replicates), plus the unembedding at the kept
positions. Their FLOP-weighted rate is the best the forward's matrix
products could do here; the forward stage's achieved rate is its useful FLOPs
(common.Shapes.forward_flops: linear + causal attention + unembedding at the
kept positions; padding is not useful work) over its wall time.

Then the knobs, each against iclprobe's `score_sequences` as shipped: batch
size, sorting replicates by length, packing several replicates into one row
(position ids restart, a block-diagonal causal mask), eager against SDPA
attention, and, on a bare forward, `inference_mode` against `no_grad` and the
KV cache the model builds unless told not to. Every variant reports its
largest log-prob difference from the shipped scoring at batch 1 on one thread.

    .venv/bin/python benchmarks/forward_limit.py [--quick] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import torch
import torch.nn.functional as F

from iclprobe.scoring import score_sequences


def matmul_rates(shapes: common.Shapes, tokens: int, kept: int, repeats: int, device, dtype):
    """Rates of each block product at `tokens` rows and the unembedding at `kept` rows.

    Returns the rows and one block's FLOP-weighted rate (total FLOPs over total
    time), in GFLOP per wall second and per CPU second.
    """
    rows, flops_total, wall_total, cpu_total = [], 0, 0.0, 0.0
    products = shapes.block_products() + [("unembed", shapes.hidden, shapes.vocab)]
    for name, fan_in, fan_out in products:
        m = kept if name == "unembed" else tokens
        x = torch.randn(m, fan_in, device=device, dtype=dtype)  # (M, in)
        w = torch.randn(fan_out, fan_in, device=device, dtype=dtype)  # (out, in), as nn.Linear
        F.linear(x, w)  # warm-up: the first call picks kernels and touches memory
        timing = common.measure(lambda x=x, w=w: F.linear(x, w), repeats, device)
        flops = 2 * m * fan_in * fan_out
        rows.append(
            {
                "product": f"{name} ({m}×{fan_in} @ {fan_in}×{fan_out})",
                "gflop_s": flops / timing["wall_s"] / 1e9,
                "gflop_per_cpu_s": flops / max(timing["cpu_s"], 1e-9) / 1e9,
            }
        )
        if name != "unembed":
            flops_total += flops
            wall_total += timing["wall_s"]
            cpu_total += timing["cpu_s"]
    return rows, flops_total / wall_total / 1e9, flops_total / max(cpu_total, 1e-9) / 1e9


def square_rate(n: int, repeats: int, device, dtype) -> tuple[float, float]:
    """GFLOP per wall second and per CPU second of an n × n × n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    timing = common.measure(lambda: a @ b, repeats, device)
    return 2 * n**3 / timing["wall_s"] / 1e9, 2 * n**3 / timing["cpu_s"] / 1e9


# --- ways to run the forward stage ----------------------------------------


def flat_logprobs(scores) -> torch.Tensor:
    return torch.tensor([lp for seq in scores for s in seq for lp in s.token_logprobs])


def shipped(batch_size: int):
    def run(model, tokenizer, seqs):
        return flat_logprobs(score_sequences(model, tokenizer, seqs, batch_size=batch_size))

    return run


def sorted_by_length(batch_size: int):
    """Batches of similar lengths: less padding; scores are put back in order."""

    def run(model, tokenizer, seqs):
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].input_ids))
        scores = score_sequences(model, tokenizer, [seqs[i] for i in order], batch_size=batch_size)
        back = [None] * len(seqs)
        for rank, i in enumerate(order):
            back[i] = scores[rank]
        return flat_logprobs(back)

    return run


def packed(per_row: int):
    """Several replicates end to end in one row, no padding.

    Position ids restart at each replicate and no attention mask is passed, so
    transformers builds a block-diagonal causal mask from the position ids
    (it needs `use_cache=False` to do so).
    """

    @torch.inference_mode()
    def run(model, tokenizer, seqs):
        device = next(model.parameters()).device
        out = []
        for first in range(0, len(seqs), per_row):
            group = seqs[first : first + per_row]
            ids = torch.tensor([t for s in group for t in s.input_ids], device=device)[
                None
            ]  # (1, T)
            pos = torch.cat([torch.arange(len(s.input_ids)) for s in group])[None].to(
                device
            )  # (1, T)
            targets, keep, offset = [], [], 0
            for s in group:
                for toks in s.answer_tokens:
                    targets += [s.input_ids[t] for t in toks]
                    keep += [offset + t - 1 for t in toks]
                offset += len(s.input_ids)
            logits = (
                model(
                    input_ids=ids,
                    position_ids=pos,
                    use_cache=False,
                    logits_to_keep=torch.tensor(keep, device=device),
                )
                .logits[0]
                .float()
            )  # (K, V)
            picked = logits.log_softmax(-1)[torch.arange(len(keep)), torch.tensor(targets)]
            out.append(picked.cpu())
        return torch.cat(out)

    return run


def eager(inner):
    def run(model, tokenizer, seqs):
        before = model.config._attn_implementation
        model.set_attn_implementation("eager")
        try:
            return inner(model, tokenizer, seqs)
        finally:
            model.set_attn_implementation(before)

    return run


def bare(mode: str, use_cache: bool):
    """A plain forward per replicate at batch 1, only the last position unembedded."""
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]

    def run(model, tokenizer, seqs):
        device = next(model.parameters()).device
        with context():
            for s in seqs:
                model(
                    input_ids=torch.tensor([s.input_ids], device=device),
                    use_cache=use_cache,
                    logits_to_keep=1,
                )

    return run


def variants(quick: bool, configured: int):
    """(name, runner, counts the unembedding at kept positions)."""
    batches = sorted({1, configured, *(() if quick else (2, 4, 8, 16))})
    out = [(f"shipped, batch {b}", shipped(b), True) for b in batches]
    out += [
        ("sorted by length, batch 8", sorted_by_length(8), True),
        ("packed, 2 per row", packed(2), True),
        ("packed, 8 per row", packed(8), True),
        ("eager attention, batch 1", eager(shipped(1)), True),
        ("eager attention, batch 8", eager(shipped(8)), True),
        ("bare: no_grad, cache built", bare("no_grad", True), False),
        ("bare: no_grad, use_cache=False", bare("no_grad", False), False),
        ("bare: inference_mode, use_cache=False", bare("inference_mode", False), False),
    ]
    return out


def padding_fraction(seqs, batch_size: int) -> float:
    padded = 0
    for first in range(0, len(seqs), batch_size):
        batch = seqs[first : first + batch_size]
        padded += max(len(s.input_ids) for s in batch) * len(batch)
    real = sum(len(s.input_ids) for s in seqs)
    return 1 - real / padded


def worker(args) -> None:
    """One forward job of `concurrent`: load, warm up, wait for the go file, score, report."""
    torch.set_num_threads(1)
    model, tokenizer, _ = common.load_model(args.model, args.dtype, args.device)
    task = common.default_task("identity", replicates=args.replicates, n_examples=args.examples)
    seqs = common.encode_task(task, tokenizer)
    batch = common.default_settings().forward.batch_size
    score_sequences(model, tokenizer, seqs[:1], batch_size=1)
    Path(args.worker + ".ready." + str(os.getpid())).touch()
    while not Path(args.worker).exists():
        time.sleep(0.01)
    started = time.time()
    score_sequences(model, tokenizer, seqs, batch_size=batch)
    tokens = sum(len(s.input_ids) for s in seqs)
    print(json.dumps({"tokens": tokens, "start": started, "end": time.time()}))


def concurrent(args, jobs: int, replicates: int, examples: int) -> dict:
    """`jobs` one-thread forward jobs at once (as Snakemake runs them): tokens/s together."""
    with tempfile.TemporaryDirectory() as tmp:
        go = str(Path(tmp) / "go")
        command = [
            sys.executable,
            __file__,
            "--worker",
            go,
            "--model",
            str(args.model),
            "--replicates",
            str(replicates),
            "--examples",
            str(examples),
            "--dtype",
            args.dtype,
            "--device",
            args.device,
        ]
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(jobs)]
        while len(list(Path(tmp).glob("go.ready.*"))) < jobs:
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("a concurrent forward worker died")
            time.sleep(0.05)
        Path(go).touch()
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    return {"tokens": sum(r["tokens"] for r in results), "wall_s": wall}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--replicates", type=int, help="default 10 (quick: 2)")
    p.add_argument("--repeats", type=int, help="timed runs per variant, minimum kept (default 2)")
    p.add_argument("--examples", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    replicates = args.replicates or (2 if args.quick else 10)
    repeats = args.repeats or (1 if args.quick else 2)
    device, dtype = args.device, getattr(torch, args.dtype)
    info = common.machine(device)

    model, tokenizer, model_info = common.load_model(args.model, args.dtype, device)
    configured = common.default_settings().forward.batch_size
    shapes = common.Shapes.of(model.config)
    n_examples = 5 if args.quick else 30
    task = common.default_task("identity", replicates=replicates, n_examples=n_examples)
    seqs = common.encode_task(task, tokenizer)
    tokens = sum(len(s.input_ids) for s in seqs)
    mean_len = tokens // len(seqs)
    mean_kept = sum(len({t - 1 for a in s.answer_tokens for t in a}) for s in seqs) // len(seqs)
    useful = common.sequence_flops(shapes, seqs)
    bare_flops = sum(sum(shapes.forward_flops(len(s.input_ids), 1).values()) for s in seqs)

    limit_rows, forward_rows, peaks, cpu_peaks = [], [], {}, {}
    baseline = None
    n_square = 1024 if args.quick else 2048
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows, one, one_cpu = matmul_rates(shapes, mean_len, mean_kept, 10 * repeats, device, dtype)
        _, eight, eight_cpu = matmul_rates(
            shapes, 8 * mean_len, mean_kept, 5 * repeats, device, dtype
        )
        peaks[threads], cpu_peaks[threads] = max(one, eight), max(one_cpu, eight_cpu)
        square, square_cpu = square_rate(n_square, repeats + 1, device, dtype)
        limit_rows += [{"threads": threads, **r} for r in rows]
        limit_rows += [
            {
                "threads": threads,
                "product": f"one block at {mean_len} tokens (FLOP-weighted)",
                "gflop_s": one,
                "gflop_per_cpu_s": one_cpu,
            },
            {
                "threads": threads,
                "product": f"one block at {8 * mean_len} tokens (FLOP-weighted)",
                "gflop_s": eight,
                "gflop_per_cpu_s": eight_cpu,
            },
            {
                "threads": threads,
                "product": f"square {n_square}³ (reference)",
                "gflop_s": square,
                "gflop_per_cpu_s": square_cpu,
            },
        ]
        for name, runner, unembeds in variants(args.quick, configured):
            runner(model, tokenizer, seqs[:1])  # warm-up
            timing = common.measure(lambda r=runner: r(model, tokenizer, seqs), repeats, device)
            logprobs = timing["result"]
            if baseline is None and logprobs is not None:
                baseline = logprobs
            diff = None if logprobs is None else float((logprobs - baseline).abs().max())
            flops = useful if unembeds else bare_flops
            rate = flops / timing["wall_s"] / 1e9
            forward_rows.append(
                {
                    "threads": threads,
                    "variant": name,
                    "pct_of_peak": round(100 * rate / peaks[threads], 1),
                    "gflop_s": rate,
                    "tokens_s": tokens / timing["wall_s"],
                    "wall_s": timing["wall_s"],
                    "cpu_s": timing["cpu_s"],
                    "gflop_per_cpu_s": flops / timing["cpu_s"] / 1e9,
                    "cpu_pct_of_peak": round(
                        100 * flops / timing["cpu_s"] / 1e9 / cpu_peaks[threads], 1
                    ),
                    "max_abs_diff": diff if diff is not None else "",
                }
            )
            print(forward_rows[-1], flush=True)

    # Snakemake runs the forward jobs side by side, one thread each: their tokens/s together.
    jobs = max(args.threads)
    if device == "cpu" and jobs > 1:
        together = concurrent(args, jobs, replicates, n_examples)
        rate = jobs * useful / together["wall_s"] / 1e9
        forward_rows.append(
            {
                "threads": f"{jobs} jobs × 1",
                "variant": f"shipped, batch {configured}, {jobs} processes at once",
                "pct_of_peak": round(100 * rate / peaks[jobs], 1),
                "gflop_s": rate,
                "tokens_s": together["tokens"] / together["wall_s"],
                "wall_s": together["wall_s"],
            }
        )
        print(forward_rows[-1], flush=True)

    shares = shapes.forward_flops(mean_len, mean_kept)
    notes = [
        common.loaded_warning(info),
        (
            f"{len(seqs)} replicates of task identity ({n_examples} examples), {tokens} tokens, "
            f"{mean_kept} of {mean_len} positions unembedded per replicate; useful GFLOP per "
            f"replicate: linear {shares['linear'] / 1e9:.1f}, attention {shares['attention'] / 1e9:.2f}, "
            f"unembedding {shares['unembed'] / 1e9:.1f}"
        ),
        (
            "pct_of_peak: achieved GFLOP/s over the best FLOP-weighted block rate at the same "
            "threads (cpu_pct_of_peak: the same from CPU seconds, steadier on a busy machine); "
            "max_abs_diff: largest per-token log-prob difference (nats) from shipped batch 1 at "
            "the first thread count; bare rows unembed the last position only"
        ),
        f"padding at batch 8: {100 * padding_fraction(seqs, 8):.1f} % of the tokens computed",
    ]

    def shipped_row(threads):
        name = f"shipped, batch {configured}"
        return next(r for r in forward_rows if r["threads"] == threads and r["variant"] == name)

    headline = []
    for t in args.threads:
        best = max((r for r in forward_rows if r["threads"] == t), key=lambda r: r["gflop_s"])
        headline.append(
            {
                "threads": t,
                "pct_of_peak": shipped_row(t)["pct_of_peak"],
                "target_pct": 70,
                "met": common.verdict(shipped_row(t)["pct_of_peak"] >= 70),
                "cpu_pct_of_peak": shipped_row(t)["cpu_pct_of_peak"],
                "best_variant": best["variant"],
                "best_pct": best["pct_of_peak"],
                "peak_gflop_s": peaks[t],
            }
        )
    headline += [
        {
            "threads": r["threads"],
            "pct_of_peak": r["pct_of_peak"],
            "target_pct": 70,
            "met": common.verdict(r["pct_of_peak"] >= 70),
            "best_variant": "(as the workflow runs them)",
            "peak_gflop_s": peaks[jobs],
        }
        for r in forward_rows
        if isinstance(r["threads"], str)
    ]
    variant_columns = ["threads", "variant", "pct_of_peak", "cpu_pct_of_peak", "gflop_s"]
    variant_columns += ["tokens_s", "wall_s", "cpu_s", "gflop_per_cpu_s", "max_abs_diff"]
    common.finish(
        "forward_limit",
        args,
        info,
        [
            common.table(
                f"Forward stage vs torch matmul at the model's shapes (batch {configured})",
                list(headline[0]),
                headline,
                notes[:1],
            ),
            common.table("What moves the forward's FLOP/s", variant_columns, forward_rows, notes),
            common.table(
                "torch matmul at the model's shapes",
                ["threads", "product", "gflop_s", "gflop_per_cpu_s"],
                limit_rows,
            ),
        ],
        {"model": model_info, "shapes": vars(shapes), "tokens": tokens, "useful_flops": useful},
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
