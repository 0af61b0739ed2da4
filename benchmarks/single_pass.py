"""Benchmark 1: one teacher-forced pass per replicate against one pass per prefix.

For N examples, iclprobe scores every answer of a replicate from one forward
pass (`iclprobe.scoring.score_sequences`, batch 1). The reference is what
tests/test_scoring.py checks it against: a plain Hugging Face pass over the
tokens before each answer token, no batching, no padding, no logits_to_keep.
Reported: the wall-time ratio (target ≥ N/2) and the largest log-prob
difference between the two (target ≤ 1e-4 nats).

Task: identity over x in 0…199 (100 examples need ≥ 100 distinct x), one
replicate per N, one torch thread (what Snakemake gives the forward job).
The reference at N = 100 takes ~5 × 10⁵ prefix tokens, so by default it runs
every 5th answer token's prefix and scales its time by the prefix tokens it
skipped (the table says so); `--prefix-every 1` runs them all.

    .venv/bin/python benchmarks/single_pass.py [--quick]
"""

from __future__ import annotations

import time

import common
import torch

from iclprobe.scoring import score_sequences

TOLERANCE = 1e-4


@torch.no_grad()
def per_prefix(model, seq, every: int):
    """Log-prob of every `every`-th answer token from a pass over its own prefix.

    Returns {token index: log-prob}, the prefix tokens run, wall and CPU seconds.
    """
    device = next(model.parameters()).device
    answer_tokens = [t for toks in seq.answer_tokens for t in toks]
    chosen = answer_tokens[::every]
    out, run_tokens = {}, 0
    wall, cpu = time.perf_counter(), time.process_time()
    for t in chosen:
        prefix = torch.tensor([seq.input_ids[:t]], device=device)  # (1, t)
        logits = model(input_ids=prefix).logits[0, -1].double()  # (V,)
        out[t] = float(logits.log_softmax(-1)[seq.input_ids[t]])
        run_tokens += t
    common.synchronize(str(device))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    all_tokens = sum(answer_tokens)
    scale = all_tokens / run_tokens
    return out, {
        "passes_run": len(chosen),
        "passes_total": len(answer_tokens),
        "prefix_tokens_run": run_tokens,
        "prefix_tokens_total": all_tokens,
        "wall_s": wall * scale,
        "cpu_s": cpu * scale,
        "extrapolated": every > 1,
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, nargs="+", help="N values (default 10 30 100)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--prefix-every",
        type=int,
        help="run every k-th prefix of the reference (default: 1, and 5 for N ≥ 100)",
    )
    args = p.parse_args()
    ns = args.examples or ([5, 10] if args.quick else [10, 30, 100])
    torch.set_num_threads(args.threads)
    info = common.machine(args.device)
    model, tokenizer, model_info = common.load_model(args.model, args.dtype, args.device)

    rows = []
    for n in ns:
        every = args.prefix_every or (2 if args.quick and n >= 10 else 5 if n >= 100 else 1)
        task = common.default_task("identity", x_low=0, x_high=199, n_examples=n, replicates=1)
        (seq,) = common.encode_task(task, tokenizer)
        score_sequences(model, tokenizer, [seq], batch_size=1)  # warm-up
        single = common.measure(
            lambda s=seq: score_sequences(model, tokenizer, [s], batch_size=1), 3, args.device
        )
        (scores,) = single["result"]
        got = {
            t: lp
            for toks, s in zip(seq.answer_tokens, scores, strict=True)
            for t, lp in zip(toks, s.token_logprobs, strict=True)
        }
        ref, ref_time = per_prefix(model, seq, every)
        diff = max(abs(got[t] - lp) for t, lp in ref.items())
        rows.append(
            {
                "N": n,
                "ratio": ref_time["wall_s"] / single["wall_s"],
                "target_ratio": n / 2,
                "met": common.verdict(
                    ref_time["wall_s"] / single["wall_s"] >= n / 2 and diff <= TOLERANCE
                ),
                "cpu_ratio": ref_time["cpu_s"] / single["cpu_s"],
                "max_abs_diff": diff,
                "within_1e-4": common.verdict(diff <= TOLERANCE),
                "single_s": single["wall_s"],
                "per_prefix_s": ref_time["wall_s"],
                "tokens": len(seq.input_ids),
                "passes": f"{ref_time['passes_run']}/{ref_time['passes_total']}",
                "extrapolated": ref_time["extrapolated"],
            }
        )
        print(rows[-1], flush=True)

    notes = [
        common.loaded_warning(info),
        (
            f"{args.threads} torch thread(s), {args.dtype} on {args.device}; task identity, x in "
            "0…199, one replicate; single pass = min of 3 runs; per-prefix = one run"
        ),
        "max_abs_diff: largest per-token log-prob difference (nats) over the prefixes run",
        (
            "passes: reference passes run / answer tokens; where fewer ran (extrapolated), its "
            "time is scaled by the prefix tokens not run (a pass costs about its length)"
        ),
        "cpu_ratio: the same ratio from process CPU time, steadier on a busy machine",
    ]
    common.finish(
        "single_pass",
        args,
        info,
        [
            common.table(
                "Single pass vs one pass per prefix",
                [
                    "N",
                    "ratio",
                    "target_ratio",
                    "met",
                    "cpu_ratio",
                    "max_abs_diff",
                    "within_1e-4",
                    "single_s",
                    "per_prefix_s",
                    "tokens",
                    "passes",
                    "extrapolated",
                ],
                rows,
                notes,
            )
        ],
        {"model": model_info},
    )


if __name__ == "__main__":
    main()
