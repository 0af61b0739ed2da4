"""What every benchmark shares: arguments, the model and task, timing, FLOP counts, tables.

A benchmark is a script `benchmarks/<name>.py` with `main()`; it writes
`<out>/<name>.json` holding the machine, its settings, its tables (title,
columns, rows, notes) and raw measurements. `run_all.py` runs each one in its
own process and prints their tables together.

Timing on a shared machine: every measurement records wall time and the
process's CPU time. Wall time is what the targets are about; with one torch
thread, CPU time is close to what the wall time would be on a quiet machine,
so it is the better guide while other jobs share the cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "resources" / "models" / "smollm2-135m"
DEFAULT_CONFIG = REPO / "config" / "config.yaml"


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--quick", action="store_true", help="small sizes: checks that it runs")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a prepared model folder")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16")
    return p


# --- the machine -----------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on, and how busy it was when they started."""
    import torch
    import transformers

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads_default": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def loaded_warning(info: dict[str, Any]) -> str | None:
    """A note for the tables when other work was running on the machine."""
    load = info["load_average_1_5_15"][0]
    if load > 0.5 * (info["logical_cpus"] or 1):
        return (
            f"load average {load} on {info['logical_cpus']} CPUs when this started: "
            "wall times are inflated and unstable; CPU times (1 thread) are the better guide"
        )
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --- timing ----------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], repeats: int = 3, device: str = "cpu") -> dict[str, Any]:
    """Run `fn` `repeats` times; wall and CPU seconds (minimum and median) and the last result.

    The minimum is the run least disturbed by other work (as `timeit` reports).
    """
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "wall_s": min(walls),
        "wall_s_median": statistics.median(walls),
        "cpu_s": min(cpus),
        "cpu_s_median": statistics.median(cpus),
        "repeats": repeats,
        "result": result,
    }


# --- model, task, prompts --------------------------------------------------


def load_model(path: Path, dtype: str = "float32", device: str = "cpu", attn: str | None = None):
    """A prepared model folder (`iclprobe.models.load_prepared`), optionally another attention."""
    from iclprobe.models import load_prepared

    if not Path(path, "iclprobe_source.json").is_file():
        sys.exit(
            f"{path} is not a prepared model folder; prepare it with "
            "`.venv/bin/snakemake --cores 1 resources/models/smollm2-135m` or pass --model"
        )
    model, tokenizer, info = load_prepared(path, dtype=dtype, device=device)
    if attn is not None:
        model.set_attn_implementation(attn)
    return model, tokenizer, info


def default_settings():
    """The validated default config (config/config.yaml)."""
    import yaml

    from iclprobe.config import load_settings

    return load_settings(yaml.safe_load(DEFAULT_CONFIG.read_text()))


def default_task(name: str = "identity", **overrides):
    """A task of the default config, with fields replaced."""
    return dataclasses.replace(default_settings().tasks[name], **overrides)


def encode_task(task, tokenizer):
    """Every replicate of a task, tokenized as the forward stage does."""
    from iclprobe.forward import encode_prompts
    from iclprobe.prompts import make_prompts

    return encode_prompts(make_prompts(task), tokenizer)[1]


# --- FLOPs -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shapes:
    """The matrix shapes of a decoder-only transformer, read from its config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config) -> Shapes:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(
            layers=config.num_hidden_layers,
            hidden=config.hidden_size,
            heads=heads,
            kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            intermediate=config.intermediate_size,
            vocab=config.vocab_size,
        )

    def block_products(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of every linear layer in one block (gated MLP, as Llama)."""
        d, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        return [
            ("q_proj", d, q),
            ("k_proj", d, kv),
            ("v_proj", d, kv),
            ("o_proj", q, d),
            ("gate_proj", d, i),
            ("up_proj", d, i),
            ("down_proj", i, d),
        ]

    @property
    def block_weights(self) -> int:
        """Matrix weights of all blocks (the non-embedding parameters less the norms)."""
        return self.layers * sum(a * b for _, a, b in self.block_products())

    def forward_flops(self, length: int, kept: int) -> dict[str, int]:
        """Useful FLOPs of one causal pass over `length` tokens, unembedding `kept` positions.

        linear: 2 × block weights × tokens (a multiply and an add per weight);
        attention: QKᵀ and AV over the causal triangle, each 2 · H · D per
        (query, key) pair with key ≤ query: 2 · 2 · L · H · D · S(S+1)/2
        (≈ 2·L·S²·d for d = H·D; a kernel that computes the full square does
        twice this, which we do not count as useful); unembedding: 2 · d · V
        per kept position. Norms, rotary embeddings and softmax are left out
        (O(S·d), under 1 %).
        """
        attention = 2 * self.layers * self.heads * self.head_dim * length * (length + 1)
        return {
            "linear": 2 * self.block_weights * length,
            "attention": attention,
            "unembed": 2 * self.hidden * self.vocab * kept,
        }


def sequence_flops(shapes: Shapes, sequences) -> int:
    """Useful FLOPs of the forward stage over EncodedSequences (padding is not useful work)."""
    total = 0
    for seq in sequences:
        kept = len({t - 1 for toks in seq.answer_tokens for t in toks})
        total += sum(shapes.forward_flops(len(seq.input_ids), kept).values())
    return total


# --- output ----------------------------------------------------------------


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-3:
            return f"{value:.1e}"
        if abs(value) < 10:
            return f"{value:.3g}"
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def verdict(met: bool) -> str:
    """A target column: a miss stands out."""
    return "yes" if met else "NO"


def table(title: str, columns: list[str], rows: list[dict[str, Any]], notes: list[str] = ()):
    return {"title": title, "columns": columns, "rows": rows, "notes": [n for n in notes if n]}


def render_text(tab: dict[str, Any]) -> str:
    cells = [[fmt(row.get(c, "")) for c in tab["columns"]] for row in tab["rows"]]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(tab["columns"])]
    lines = [
        tab["title"],
        "  ".join(c.rjust(w) for c, w in zip(tab["columns"], widths, strict=True)),
    ]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines += [f"  note: {n}" for n in tab["notes"]]
    return "\n".join(lines)


def render_markdown(tab: dict[str, Any]) -> str:
    lines = [f"**{tab['title']}**", ""]
    lines.append("| " + " | ".join(tab["columns"]) + " |")
    lines.append("|" + "---|" * len(tab["columns"]))
    for row in tab["rows"]:
        lines.append("| " + " | ".join(fmt(row.get(c, "")) for c in tab["columns"]) + " |")
    lines += [""] + [f"- {n}" for n in tab["notes"]]
    return "\n".join(lines)


def finish(name: str, args, info: dict[str, Any], tables: list[dict], raw: dict[str, Any]) -> None:
    """Print the tables and write `<out>/<name>.json`."""
    info = {**info, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
    payload = {
        "benchmark": name,
        "quick": bool(args.quick),
        "machine": info,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "peak_rss_mb": peak_rss_mb(),
        "tables": tables,
        "raw": raw,
    }
    for tab in tables:
        print(render_text(tab), end="\n\n")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path}")


# --- memory ------------------------------------------------------------------


class TrackedMemory:
    """Peak bytes of the tensors torch allocates inside the block (a CPU max_memory_allocated).

    A TorchDispatchMode sees every operator's outputs: an output whose storage
    is none of its inputs' (not a view, not in place) is a new allocation,
    counted until its storage is freed (a weak reference tells). Tensor
    deep copies (KV caches are copied with `copy.deepcopy`) do not pass
    through the dispatcher, so `Tensor.__deepcopy__` is wrapped too. Slower
    than the code it watches: time it separately.

        with TrackedMemory() as tracked:
            run()
        tracked.peak  # bytes
    """

    def __init__(self):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        tracker = self
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = self.peak = 0

        def track(tensor) -> None:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                return
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            held = tracker.live.get(key)
            if held is not None and not held[0].expired():
                return
            if held is not None:
                tracker.current -= held[1]
            tracker.live[key] = (StorageWeakRef(storage), storage.nbytes())
            tracker.current += storage.nbytes()
            if tracker.current > tracker.peak:
                tracker._purge()
                tracker.peak = max(tracker.peak, tracker.current)

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                inputs = {
                    x.untyped_storage().data_ptr()
                    for x in tree_flatten((args, kwargs))[0]
                    if isinstance(x, torch.Tensor) and x.device.type != "meta"
                }
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                        track(t)
                return out

        self._mode = Mode()
        self._deepcopy = torch.Tensor.__deepcopy__
        self._track = track

    def _purge(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __enter__(self):
        import torch

        original, track = self._deepcopy, self._track

        def deepcopy(tensor, memo):
            copied = original(tensor, memo)
            track(copied)
            return copied

        torch.Tensor.__deepcopy__ = deepcopy
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        self._mode.__exit__(*exc)
        torch.Tensor.__deepcopy__ = self._deepcopy
        self._purge()
        return False
