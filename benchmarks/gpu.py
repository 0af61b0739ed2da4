"""Benchmark 6: benchmarks 1-3 on a GPU in bfloat16, with model FLOP utilisation.

Runs, each as its own process with `--device cuda --dtype bfloat16`:
single_pass.py (1) and stages.py (3); and here, in place of
forward_limit.py's CPU knobs (2), what matters on a GPU: the forward stage's
FLOP/s at batch sizes up to hundreds of replicates, as a fraction of the
GPU's dense bf16 peak (model FLOP utilisation, MFU; the spec sheet's number,
or `--peak-tflops`) and of a large bf16 matmul measured in the same run.
It also reports how far bf16 moves the log-probs from float32 on the same
GPU (the forward's numbers are CPU-identical only in float32).

On one H100/H200 it should finish in a few minutes. Smoke test without a GPU
(float32 is not the point; this checks that every path runs):

    .venv/bin/python benchmarks/gpu.py --device cpu --quick
    .venv/bin/python benchmarks/gpu.py            # on a machine with CUDA
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import common
import torch

from iclprobe.scoring import score_sequences

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
BF16_PEAK_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
]


BF16_NOTE = (
    "the 1e-4 nats bound is float32's; in bfloat16 the single pass and the per-prefix passes "
    "round differently (8 mantissa bits), so differences of ~0.1 nats are expected"
)


def spec_peak(name: str) -> float | None:
    for key, tflops in BF16_PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops * 1e12
    return None


def square_rate(n: int, device: str, dtype) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    return 2 * n**3 / common.measure(lambda: a @ b, 5, device)["wall_s"]


def flat(scores) -> torch.Tensor:
    return torch.tensor([lp for seq in scores for s in seq for lp in s.token_logprobs])


def utilisation(args, info) -> tuple[list[dict], list[str], dict]:
    """The forward stage's FLOP/s by batch size, against the spec and a measured matmul."""
    device, dtype = args.device, getattr(torch, args.dtype)
    model, tokenizer, _ = common.load_model(args.model, args.dtype, device)
    shapes = common.Shapes.of(model.config)
    replicates = 4 if args.quick else 256
    task = common.default_task("identity", replicates=replicates)
    seqs = common.encode_task(task, tokenizer)
    tokens = sum(len(s.input_ids) for s in seqs)
    useful = common.sequence_flops(shapes, seqs)
    name = info.get("gpu", common.cpu_model())
    peak = args.peak_tflops * 1e12 if args.peak_tflops else spec_peak(name)
    measured = square_rate(1024 if args.quick else 8192, device, dtype)
    rows = []
    for batch in [1, 4] if args.quick else [1, 8, 32, 128, 256]:
        score_sequences(model, tokenizer, seqs[:batch], batch_size=batch)  # warm-up
        timing = common.measure(
            lambda b=batch, m=model: score_sequences(m, tokenizer, seqs, batch_size=b), 2, device
        )
        rate = useful / timing["wall_s"]
        rows.append(
            {
                "batch": batch,
                "mfu_pct": 100 * rate / peak if peak else "",
                "pct_of_matmul": 100 * rate / measured,
                "tflop_s": rate / 1e12,
                "tokens_s": tokens / timing["wall_s"],
                "wall_s": timing["wall_s"],
            }
        )
        print(rows[-1], flush=True)
    bf16 = flat(score_sequences(model, tokenizer, seqs, batch_size=8))
    del model
    full, tokenizer, _ = common.load_model(args.model, "float32", device)
    fp32 = flat(score_sequences(full, tokenizer, seqs, batch_size=8))
    notes = [
        (
            f"{name}; {args.dtype}; task identity, {replicates} replicates, {tokens} tokens; "
            f"spec peak {peak / 1e12 if peak else 'unknown'} TFLOP/s; measured "
            f"{'1024' if args.quick else '8192'}³ matmul {measured / 1e12:.1f} TFLOP/s"
        ),
        (
            f"largest per-token log-prob difference {args.dtype} vs float32 on the same device: "
            f"{float((bf16 - fp32).abs().max()):.3g} nats (mean {float((bf16 - fp32).abs().mean()):.2g})"
        ),
        (
            "FLOPs as in forward_limit.py: linear + causal attention + unembedding at kept "
            "positions, padding not counted"
        ),
    ]
    raw = {"spec_peak_flops": peak, "measured_matmul_flops": measured, "tokens": tokens}
    return rows, notes, raw


def child(script: str, args, extra: list[str]) -> dict:
    """Run another benchmark on this device; its JSON (or why it failed)."""
    out = args.out / "gpu"
    command = [
        sys.executable,
        str(Path(__file__).with_name(script)),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--model",
        str(args.model),
        "--out",
        str(out),
        *(["--quick"] if args.quick else []),
        *extra,
    ]
    print("running", " ".join(command), flush=True)
    done = subprocess.run(command, check=False, text=True)
    path = out / script.replace(".py", ".json")
    if done.returncode != 0 or not path.is_file():
        return {"failed": f"{script} exited {done.returncode}"}
    return json.loads(path.read_text())


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(device="cuda", dtype="bfloat16")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not known")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --device cpu --quick for a smoke test")
    info = common.machine(args.device)
    rows, notes, raw = utilisation(args, info)
    tables = [
        common.table(
            "Forward stage model FLOP utilisation (MFU) by batch size", list(rows[0]), rows, notes
        )
    ]
    for script, extra in (("single_pass.py", []), ("stages.py", [])):
        result = child(script, args, extra)
        raw[script] = result
        if "failed" in result:
            tables.append(common.table(f"{script} (on {args.device})", [], [], [result["failed"]]))
        else:
            for tab in result["tables"]:
                notes = tab["notes"]
                if script == "single_pass.py" and args.dtype != "float32":
                    notes = [*notes, BF16_NOTE]
                title = f"{tab['title']} ({args.device}, {args.dtype})"
                tables.append({**tab, "title": title, "notes": notes})
    common.finish("gpu", args, info, tables, raw)


if __name__ == "__main__":
    main()
