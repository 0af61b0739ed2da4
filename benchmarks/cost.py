"""Benchmark 7: the cost model (iclprobe.cost) against each stage's measured time and memory.

Two model shapes: SmolLM2-135M (real weights, the prepared `--model` folder)
and a Llama-3.2-1B-shaped model with random weights built in code (16 layers,
width 2048, 32 heads, 8 KV heads, MLP 8192, vocabulary 128,256, tied
embeddings; SmolLM2's tokenizer, whose 49,152 ids all lie inside that
vocabulary). Per shape:

1. Machine rates at the model's shapes (`measure_rates`): torch's matmul
   chained over the model's own block weights at M rows (M = 1 … 512), the
   unembedding at M rows, the attention kernel at the model's head shapes,
   the block's non-matrix work (hand-written norms, rotary, SiLU and adds),
   the per-layer and per-pass dispatch cost (tiny 2- and 8-layer models),
   each operation over float32 vocabulary tensors, and the model's own KV
   cache copied for a batch and grown by a pass. Median CPU seconds.
2. Every stage's library call (`run_forward`, `run_probe`, `run_lens`,
   `run_heads`, `run_patching`) in this process, one thread, on the seed task:
   wall and CPU seconds; the peak resident memory above the stage's start
   (the kernel's high-water mark, reset before the stage through
   /proc/self/clear_refs, after returning freed heap to the system); every
   model pass (rows, new tokens, cached length, whether it decodes).
3. The cost model's prediction from the same settings and the prompts'
   token layout; greedy decoding, which depends on the model's answers, is
   taken from the recorded decoding passes.

The time target is |predicted / measured − 1| ≤ 25 % (measured: CPU seconds,
which with one thread are what the wall time is on an idle machine; wall time
is shown too). Memory: the predicted peak above the weights against the
measured one.

    .venv/bin/python benchmarks/cost.py [--quick] [--shapes model llama1b] [--model FOLDER]
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import re
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import common
import polars as pl
import torch
import torch.nn.functional as F
import yaml
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from iclprobe import cost
from iclprobe.config import load_settings
from iclprobe.forward import encode_prompts, run_forward
from iclprobe.heads import run_heads
from iclprobe.lens import LensPlan, run_lens
from iclprobe.patching import run_patching
from iclprobe.prefix import _batch_cache, encode_prefix
from iclprobe.probe import run_probe
from iclprobe.prompts import make_prompts

TASK, TARGET = "seed_2x_plus_3", "identity"
STAGES = ["forward", "probe", "lens", "heads", "patching"]
LLAMA_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
}
# --quick: the same code on a small shape with the same vocabulary.
LLAMA_QUICK = {**LLAMA_1B, "hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 2}


# --- memory and load --------------------------------------------------------


def _status(key: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1)) * 1024


def rss() -> float:
    return _status("VmRSS")


def settle() -> None:
    """Free what can be freed and give the heap's free pages back to the system."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def reset_peak() -> bool:
    """Reset the kernel's peak resident memory (VmHWM) of this process to its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- what the model runs ----------------------------------------------------

DECODING = {"_extend", "greedy", "_decode_stuck"}


def _decoding() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name in DECODING:
            return True
        frame = frame.f_back
    return False


@contextmanager
def recording(model):
    """Record every pass of `model`: rows, new tokens, cached positions, decoding or not."""
    passes = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values", kwargs.get("cache"))
        cached = 0 if cache is None else int(cache.get_seq_length())
        passes.append((int(ids.shape[0]), int(ids.shape[1]), cached, _decoding()))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield passes
    finally:
        handle.remove()


@contextmanager
def measured(model):
    """Time, peak memory above the start, and the passes of what runs inside."""
    settle()
    record = {"rss_start": rss(), "load_start": load(), "peak_reset": reset_peak()}
    wall, cpu = time.perf_counter(), time.process_time()
    with recording(model) as passes:
        yield record
    record.update(
        wall_s=time.perf_counter() - wall,
        cpu_s=time.process_time() - cpu,
        peak_above_start=_status("VmHWM") - record["rss_start"],
        load_end=load(),
        passes=passes,
    )


# --- machine rates ------------------------------------------------------------


def _seconds(fn, repeats: int) -> float:
    """Median CPU seconds of `fn` after a warm-up: on a shared machine the stages run at
    its typical state, not its best."""
    fn()
    return common.measure(fn, repeats)["cpu_s_median"]


PROBE_ROWS = 16


@torch.inference_mode()
def load_probe(model) -> float:
    """CPU seconds of the model's block matrices at 16 rows: run beside each stage and the
    rates, their ratio says how much other work on the machine slowed this one down."""
    mats = block_matrices(model)
    inputs = {w.shape[1]: torch.randn(PROBE_ROWS, w.shape[1]) for w in mats}
    return _seconds(lambda: [F.linear(inputs[w.shape[1]], w) for w in mats], 3)


def block_matrices(model) -> list[torch.Tensor]:
    mats = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        mats += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    return [m.weight for m in mats]


def _elementwise(shape: cost.ModelShape, m: int) -> float:
    """A block's non-matrix work written out: 2 RMS norms, rotary on q and k, SiLU·up, 2 adds."""
    d, i, h, kv, hd = shape.hidden, shape.intermediate, shape.heads, shape.kv_heads, shape.head_dim
    x, w = torch.randn(m, d), torch.randn(d)
    gate, up = torch.randn(m, i), torch.randn(m, i)
    q, k = torch.randn(1, h, m, hd), torch.randn(1, kv, m, hd)
    cos, sin = torch.randn(m, hd), torch.randn(m, hd)

    def rms(t):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def rotary(t):
        half = t.shape[-1] // 2
        return t * cos + torch.cat((-t[..., half:], t[..., :half]), -1) * sin

    def block():
        y = rms(x)
        rotary(q)
        rotary(k)
        z = x + y
        rms(z)
        F.silu(gate) * up
        return z + y

    return _seconds(block, 5) / m


def _cache_copy_rate(model, shape: cost.ModelShape, rows: int = 32, cached: int = 256) -> float:
    """Bytes written per second by the KV cache copies the stages make, timed on the model's
    own cache of `cached` positions: copied and repeated for `rows` rows (`prefix._batch_cache`,
    as a batch of queries or ablations does), then every layer's keys and values grown by 3
    positions (the concatenation of a pass after a cache). Each repetition starts with the
    heap given back to the system, so that the copies fault their pages in as the stages'
    fresh copies do (measured: 2.3 GB/s on SmolLM2 so, 4.5 GB/s into warm pages; an
    ablation pass there copied at 2.9)."""
    prefix = encode_prefix(model, [i % shape.vocab for i in range(cached)])
    new = torch.randn(rows, shape.kv_heads, 3, shape.head_dim)
    seconds = []
    for _ in range(5):
        settle()
        started = time.process_time()
        cache = _batch_cache(prefix, rows)
        tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
        grown = [torch.cat([t, new], dim=-2) for t in tensors]
        seconds.append(time.process_time() - started)
        del cache, tensors, grown
    kv = shape.kv_bytes("float32")
    return ((1 + rows) * cached * kv + rows * (cached + 3) * kv) / statistics.median(seconds)


def _overheads() -> tuple[float, float]:
    """Seconds per layer per pass and per pass, from tiny models (their arithmetic is nil)."""

    def one_token(layers: int) -> float:
        config = LlamaConfig(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model = LlamaForCausalLM(config).eval()
        ids = torch.zeros((1, 1), dtype=torch.long)
        keep = torch.empty(0, dtype=torch.long)
        with torch.inference_mode():
            return _seconds(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=keep), 30)

    two, eight = one_token(2), one_token(8)
    per_layer = (eight - two) / 6
    return per_layer, max(two - 2 * per_layer, 0.0)


@torch.inference_mode()
def measure_rates(model, shape: cost.ModelShape, quick: bool) -> cost.Rates:
    """The machine's rates at this model's shapes (see the module docstring)."""
    mats = block_matrices(model)
    grid = (1, 4, 16, 64) if quick else (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    linear = []
    for m in grid:
        inputs = {w.shape[1]: torch.randn(m, w.shape[1]) for w in mats}
        linear.append((m, _seconds(lambda i=inputs: [F.linear(i[w.shape[1]], w) for w in mats], 2)))
    unembed_w = model.lm_head.weight  # (V, d)
    unembed = []
    for m in (1, 8, 32) if quick else (1, 8, 32, 128, 256, 512, 1024):
        x = torch.randn(m, shape.hidden)
        unembed.append((m, _seconds(lambda x=x: F.linear(x, unembed_w), 3)))
    s, h, kv, hd = 256, shape.heads, shape.kv_heads, shape.head_dim
    q, k, v = torch.randn(1, h, s, hd), torch.randn(1, kv, s, hd), torch.randn(1, kv, s, hd)
    causal = _seconds(
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), 5
    )
    attention = 4 * h * hd * s * (s + 1) / 2 / causal
    rows = 64
    x = torch.randn(rows, shape.vocab)
    ops = {
        "softmax": lambda: x.log_softmax(-1),
        "topk": lambda: x.topk(10, dim=-1),
        "argmax": lambda: x.argmax(-1),
        "compare": lambda: x > 0.5,
        "multiply": lambda: x * x,
        "reduce": lambda: x.sum(-1),
        "copy": lambda: x.bfloat16().float(),
    }
    vocab = {name: _seconds(fn, 5) / x.numel() for name, fn in ops.items()}
    vocab["copy"] /= 2  # two conversions
    copy = _cache_copy_rate(model, shape)
    per_layer, per_pass = _overheads()
    return cost.Rates(
        linear=tuple(linear),
        unembed=tuple(unembed),
        attention=attention,
        elementwise=_elementwise(shape, 256),
        layer_overhead=per_layer,
        pass_overhead=per_pass,
        vocab=vocab,
        copy=copy,
        source="measured on this CPU, one thread",
    )


# --- models, settings, stages -------------------------------------------------


def random_llama(config: dict):
    torch.manual_seed(0)
    before = rss()
    model = LlamaForCausalLM(LlamaConfig(**config)).eval()
    settle()
    return model, rss() - before


def settings_for(shape_name: str, quick: bool):
    """The default config; the 1B shape (and --quick) keeps fewer replicates and contexts
    so that the whole benchmark takes about 10 minutes on an idle 2-core machine."""
    raw = yaml.safe_load(common.DEFAULT_CONFIG.read_text())
    if shape_name != "model" or quick:
        raw["replicates"] = 2
        raw["probe"]["ks"] = [0, 3, 10, 20]
        raw["heads"]["replicates"] = 2
        raw["heads"]["causal"]["replicates"] = 1
        raw["patching"]["replicates"] = 1
    if quick:
        raw["probe"]["ks"] = [0, 2]
        raw["lens"]["examples"] = [1, "last"]
        raw["heads"]["examples"] = [2, "last"]
    return load_settings(raw)


def stage_calls(model, tokenizer, settings, model_name: str) -> dict:
    """Every stage's library call on the seed task, as {stage: call}; lens and heads read
    the forward table, so the forward call stores it for them."""
    task, target = settings.tasks[TASK], settings.tasks[TARGET]
    prompts, target_prompts = make_prompts(task), make_prompts(target)
    tables = {}
    heads, patching = settings.heads, settings.patching

    def forward():
        tables["forward"] = run_forward(
            prompts,
            model,
            tokenizer,
            model_name=model_name,
            task=task,
            batch_size=settings.forward.batch_size,
            top_k=settings.forward.top_k,
        )

    def probe():
        tables["probe"] = run_probe(
            prompts,
            model,
            tokenizer,
            model_name=model_name,
            task=task,
            ks=settings.probe.ks_for(task),
            replicates=settings.probe.replicates_for(task),
            batch_size=settings.probe.batch_size,
        )

    def lens():
        plan = LensPlan.for_task(settings.lens, task)
        run_lens(tables["forward"], prompts, model, tokenizer, task=task, plan=plan)

    def heads_():
        run_heads(
            prompts,
            tables["forward"],
            model,
            tokenizer,
            model_name=model_name,
            examples=heads.examples_for(task),
            replicates=heads.replicates_for(task),
            causal_examples=heads.causal_examples_for(task),
            causal_replicates=heads.causal_replicates_for(task),
            batch_rows=heads.batch_rows,
        )

    def patching_():
        tables["patching"] = run_patching(
            prompts.filter(pl.col("replicate").is_in(patching.replicates_for(task))),
            target_prompts,
            model,
            tokenizer,
            model_name=model_name,
            task=task,
            target_task=target,
            replicates=patching.replicates_for(task),
            pairs=patching.pairs,
            context_examples=patching.examples_for(task, target),
        )

    calls = dict(zip(STAGES, [forward, probe, lens, heads_, patching_], strict=True))
    calls["tables"] = tables
    return calls


def run_stages(model, tokenizer, settings, model_name: str) -> dict:
    """Every stage timed (with its passes and resident memory), then again with its
    allocations tracked (slower, so not timed); returns {stage: record}."""
    calls = stage_calls(model, tokenizer, settings, model_name)
    tables = calls.pop("tables")
    records = {}
    for stage, call in calls.items():
        print(f"  {stage}: timed", flush=True)
        before = load_probe(model)
        with measured(model) as records[stage]:
            call()
        records[stage]["probe_s"] = (before + load_probe(model)) / 2
    for stage, call in calls.items():
        print(f"  {stage}: allocations tracked", flush=True)
        settle()
        with common.TrackedMemory() as tracked:
            call()
        records[stage]["tracked_peak"] = tracked.peak
    records["patching"]["candidates"] = patching_candidates(tables["patching"])
    return records


def patching_candidates(table: pl.DataFrame) -> float:
    """Distinct answers scored per pair (the task's, the source's, the target's own)."""
    pairs = table.unique(["replicate", "pair"])
    return sum(
        len({y for y in row if y is not None})
        for row in pairs.select("y_task", "y_answer", "y_target_default").iter_rows()
    ) / max(pairs.height, 1)


def ablated_answers(settings, tokenizer) -> list[int]:
    """Answer tokens of each example the heads stage ablates (a finer layout than a mean)."""
    task, heads = settings.tasks[TASK], settings.heads
    replicates, encoded = encode_prompts(make_prompts(task), tokenizer)
    by_replicate = dict(zip(replicates, encoded, strict=True))
    return [
        len(by_replicate[r].answer_tokens[e - 1])
        for r in heads.causal_replicates_for(task)
        for e in heads.causal_examples_for(task)
    ]


def predictions(shape, settings, tokenizer, records) -> dict[str, cost.StageCost]:
    """The cost model's stages, decoding taken from the recorded decoding passes."""
    task, target = settings.tasks[TASK], settings.tasks[TARGET]
    layout = cost.Layout.measure(task, tokenizer, settings.lens.candidates_for(task))
    target_layout = cost.Layout.measure(target, tokenizer, settings.lens.candidates_for(target))

    def decoded(stage: str, by_rows: bool) -> cost.Decoding:
        steps = [
            (rows if by_rows else tokens, cached)
            for rows, tokens, cached, decoding in records[stage]["passes"]
            if decoding
        ]
        return cost.Decoding(tuple(steps))

    dtype = "float32"
    return {
        "forward": cost.forward_cost(shape, task, layout, settings.forward.batch_size, dtype),
        "probe": cost.probe_cost(
            shape, task, layout, settings, dtype, decoding=decoded("probe", True)
        ),
        "lens": cost.lens_cost(shape, task, layout, settings, dtype),
        "heads": cost.heads_cost(
            shape, task, layout, settings, dtype, answers=ablated_answers(settings, tokenizer)
        ),
        "patching": cost.patching_cost(
            shape,
            task,
            layout,
            target_layout,
            settings,
            dtype,
            decoding=decoded("patching", False),
            candidates=records["patching"]["candidates"],
        ),
    }


def compare(shape_name, shape, predicted, records, rates) -> list[dict]:
    rows = []
    for stage in STAGES:
        p, r = predicted[stage], records[stage]
        seconds = p.seconds(rates)
        counted = sum(rows_ * tokens for rows_, tokens, _, _ in r["passes"])
        rows.append(
            {
                "shape": shape_name,
                "stage": stage,
                "tokens_model": p.tokens,
                "tokens_run": counted,
                "time_model_s": seconds,
                "time_cpu_s": r["cpu_s"],
                "time_ratio": seconds / r["cpu_s"],
                "time_met": common.verdict(abs(seconds / r["cpu_s"] - 1) <= 0.25),
                "slowdown": r["slowdown"],
                "ratio_at_load": seconds * r["slowdown"] / r["cpu_s"],
                "wall_s": r["wall_s"],
                "mem_model_mb": p.transient / 2**20,
                "mem_tracked_mb": r["tracked_peak"] / 2**20,
                "mem_ratio": p.transient / max(r["tracked_peak"], 1),
                "mem_met": common.verdict(abs(p.transient / max(r["tracked_peak"], 1) - 1) <= 0.25),
                "rss_mb": r["peak_above_start"] / 2**20,
                "load_1min": f"{r['load_start'][0]}→{r['load_end'][0]}",
            }
        )
        print(rows[-1], flush=True)
    return rows


def shape_run(shape_name: str, args, tokenizer) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    settings = settings_for(shape_name, args.quick)
    if shape_name == "model":
        before = rss()
        model, _, _ = common.load_model(args.model)
        with torch.inference_mode():  # touch every weight (the safetensors file is mapped)
            model(input_ids=torch.zeros((1, 1), dtype=torch.long))
        settle()
        loaded = rss() - before
    else:
        model, loaded = random_llama(LLAMA_QUICK if args.quick else LLAMA_1B)
    shape = cost.ModelShape.from_config(model.config.to_dict())
    print(f"{shape_name}: {shape}; measuring rates", flush=True)
    rates = measure_rates(model, shape, args.quick)
    probe_at_rates = load_probe(model)
    records = run_stages(model, tokenizer, settings, shape_name)
    for record in records.values():
        record["slowdown"] = record["probe_s"] / probe_at_rates
    predicted = predictions(shape, settings, tokenizer, records)
    rows = compare(shape_name, shape, predicted, records, rates)
    weights = {
        "shape": shape_name,
        "weights_model_mb": shape.weight_bytes("float32") / 2**20,
        "weights_measured_mb": loaded / 2**20,
    }
    parts = {
        stage: {
            part.name: {
                "seconds": rates.part_seconds(shape, part),
                "memory": part.memory,
                "passes": len(part.passes),
            }
            for part in predicted[stage].parts
        }
        for stage in STAGES
    }
    raw = {
        "shape": dataclasses.asdict(shape),
        "rates": dataclasses.asdict(rates),
        "weights": weights,
        "parts": parts,
        "records": {s: {k: v for k, v in r.items() if k != "passes"} for s, r in records.items()},
        "passes": {s: r["passes"] for s, r in records.items()},
    }
    del model
    settle()
    return rows, raw


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument(
        "--shapes",
        nargs="+",
        default=["model", "llama1b"],
        choices=["model", "llama1b"],
        help="model: the prepared --model folder (SmolLM2 by default); llama1b: built in code",
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    info = common.machine()
    info["uptime"] = Path("/proc/uptime").read_text().split()[0]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    rows, raw = [], {}
    for shape_name in args.shapes:
        shape_rows, raw[shape_name] = shape_run(shape_name, args, tokenizer)
        label = args.model.name if shape_name == "model" else shape_name
        for row in shape_rows:
            row["shape"] = label
        raw[shape_name]["weights"]["shape"] = label
        rows += shape_rows
    weights = [raw[s]["weights"] for s in args.shapes]
    notes = [
        common.loaded_warning(info),
        (
            "time_model_s: iclprobe.cost with this machine's rates measured at each shape; "
            "time_cpu_s: the stage call's CPU seconds (one thread: the wall time of an idle "
            "machine); wall_s: its wall seconds; target |ratio − 1| ≤ 25 %"
        ),
        (
            "mem_tracked_mb: the peak of the tensors torch allocated during the stage (a second "
            "run, common.TrackedMemory: CPU's analogue of torch.cuda.max_memory_allocated) "
            "against mem_model_mb, the model's peak above the weights; target |ratio − 1| ≤ "
            "25 %; rss_mb: the peak resident memory above the stage's start in the timed run "
            "(kernel high-water mark; it adds the allocator's free pages and Python objects)"
        ),
        (
            "tokens_model: positions the model counts (decoding taken from the run); "
            "tokens_run: positions the model's passes received"
        ),
        "load_1min: the 1-minute load average at the stage's start → end (2 CPUs)",
        (
            "slowdown: CPU seconds of the model's block matrices at 16 rows around the stage "
            "over the same right after the rates were measured (1 when nothing else ran "
            "between them); ratio_at_load: time_ratio × slowdown, the model with rates "
            "scaled to the machine's state during the stage"
        ),
        "weights: "
        + "; ".join(
            f"{w['shape']} {w['weights_model_mb']:.0f} MB predicted, "
            f"{w['weights_measured_mb']:.0f} MB measured (RSS after loading minus before)"
            for w in weights
        ),
    ]
    columns = list(rows[0])
    common.finish(
        "cost",
        args,
        info,
        [common.table("Cost model vs measurement, per stage and shape", columns, rows, notes)],
        raw,
    )


if __name__ == "__main__":
    main()
