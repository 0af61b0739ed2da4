"""The cost model (iclprobe.cost) against independent counts on tiny models.

FLOPs against torch's FlopCounterMode while each stage's real code runs;
token positions against a hook on the model; peak memory against the tensors
torch allocates (benchmarks/common.TrackedMemory, CPU's analogue of
torch.cuda.max_memory_allocated); parameter counts against torch and the
published sizes. Times are never asserted here (benchmarks/cost.py measures them).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from conftest import digit_tokenizer, tiny_llama
from iclprobe import cost
from iclprobe.config import load_settings
from iclprobe.prefix import _cache_argument, _returned_cache

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common
import cost as cost_benchmark  # benchmarks/cost.py: the stages' calls, a pass hook

# Answers of one width (two digits), so that the layout's means are every prompt's counts.
TASKS = {
    "seed_2x_plus_3": {
        "function": "x + 10",
        "x_range": [0, 89],
        "n_examples": 30,
        "patch_target": "identity",
    },
    "identity": {"function": "x", "x_range": [10, 99], "n_examples": 30, "patch_target": "plus"},
    "plus": {"function": "x + 1", "x_range": [10, 98], "n_examples": 30},
}


def settings():
    raw = {
        "models": {"m": {"path": "/not/read"}},
        "tasks": TASKS,
        "replicates": 4,
        "probe": {"ks": [0, 2, 5]},
        "heads": {"replicates": 3},
        "patching": {"replicates": 2},
    }
    return load_settings(raw)


def test_parameters_match_torch_and_the_published_sizes():
    for tied in (True, False):
        model = tiny_llama(vocab_size=97)
        if not tied:
            model.config.tie_word_embeddings = False
            model = type(model)(model.config)
        shape = cost.ModelShape.from_config(model.config.to_dict())
        assert shape.parameters == sum(p.numel() for p in model.parameters())
    # Llama-3.1-8B and -70B as their model cards count them; SmolLM2 as DESIGN.md does.
    assert cost.SHAPES["llama-3.1-8b"].parameters == 8_030_261_248
    assert cost.SHAPES["llama-3.1-70b"].parameters == 70_553_706_496
    assert round(cost.SHAPES["smollm2-135m"].parameters / 1e6, 1) == 134.5


def test_kv_bytes_match_a_dynamic_cache():
    model = tiny_llama(vocab_size=50)
    shape = cost.ModelShape.from_config(model.config.to_dict())
    with torch.inference_mode():
        argument = {_cache_argument(type(model)): DynamicCache()}
        out = model(input_ids=torch.zeros((3, 7), dtype=torch.long), use_cache=True, **argument)
    cache = _returned_cache(out)
    held = sum(
        layer.keys.nbytes + layer.values.nbytes
        for layer in cache.layers  # (B, KV, S, D) each
    )
    assert held == 3 * 7 * shape.kv_bytes("float32")


@pytest.fixture(scope="module")
def runs():
    """Every stage's real code on a tiny Llama: its FLOPs, passes and tracked peak memory."""
    torch.manual_seed(0)
    tokenizer = digit_tokenizer()
    # A vocabulary much wider than the model, so that the logits the model counts dominate
    # the stages' memory as they do for real models (the tokenizer uses its first 50 ids).
    model = tiny_llama(vocab_size=16384)
    chosen = settings()
    calls = cost_benchmark.stage_calls(model, tokenizer, chosen, "m")
    tables = calls.pop("tables")
    records = {}
    for stage, call in calls.items():
        with FlopCounterMode(display=False) as counter, cost_benchmark.recording(model) as passes:
            call()
        flops = {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()}
        with common.TrackedMemory() as tracked:
            call()
        records[stage] = {"passes": passes, "flops": flops, "peak": tracked.peak}
    records["patching"]["candidates"] = cost_benchmark.patching_candidates(tables["patching"])
    shape = cost.ModelShape.from_config(model.config.to_dict())
    return records, cost_benchmark.predictions(shape, chosen, tokenizer, records)


@pytest.mark.parametrize("stage", cost_benchmark.STAGES)
def test_matrix_flops_match_the_flop_counter(runs, stage):
    """Linear layers, unembedding and read-outs: every (addmm, mm) the stage ran, within 1 %.

    Attention is not in the count (the CPU attention kernel has no FLOP formula), nor
    the heads' per-head projection (a bmm of n × H × D × d, under 0.2 % here).
    """
    records, predicted = runs
    measured = records[stage]["flops"]
    matrix = measured.get("mm", 0) + measured.get("addmm", 0)
    flops = predicted[stage].flops()
    assert flops["linear"] + flops["unembed"] + flops["readout"] == pytest.approx(matrix, rel=0.01)


@pytest.mark.parametrize("stage", cost_benchmark.STAGES)
def test_positions_match_the_passes_run(runs, stage):
    records, predicted = runs
    counted = sum(rows * tokens for rows, tokens, _, _ in records[stage]["passes"])
    assert predicted[stage].tokens == pytest.approx(counted, rel=0.01)
    assert len(predicted[stage].passes) == len(records[stage]["passes"])


@pytest.mark.parametrize("stage", cost_benchmark.STAGES)
def test_peak_memory_matches_tracked_allocations(runs, stage):
    """The model's peak above the weights against torch's allocations, within 15 %.

    Measured: within 7 % for every stage here, within 3 % on SmolLM2
    (benchmarks/cost.py); on a tiny model the small tensors the model leaves out
    (masks, index tensors, captured activations) weigh more.
    """
    records, predicted = runs
    assert predicted[stage].transient == pytest.approx(records[stage]["peak"], rel=0.15)


def test_tracked_memory_counts_new_tensors_and_copies_but_not_views():
    import copy

    base = torch.zeros(1000, 1000)  # 4 MB, allocated before: not counted
    with common.TrackedMemory() as tracked:
        a = torch.ones(1000, 1000)  # 4 MB
        b = copy.deepcopy(a)  # 4 MB (not through the dispatcher)
        base[10:20].sum()  # a view: nothing new but the 4-byte sum
        c = a.repeat_interleave(3, 0)  # 12 MB, freed
        del c
        d = torch.cat([a, b])  # 8 MB
    assert tracked.peak == pytest.approx(20e6, rel=1e-4)
    assert tracked.current == pytest.approx(16e6, rel=1e-4)
    del d


def test_interpolated_rates():
    points = ((1, 1.0), (4, 2.0), (16, 8.0))
    assert cost._interpolate(points, 0) == 0
    assert cost._interpolate(points, 1) == 1.0
    assert cost._interpolate(points, 2) == pytest.approx(1 + 1 / 3)
    assert cost._interpolate(points, 10) == pytest.approx(5.0)
    assert cost._interpolate(points, 32) == pytest.approx(16.0)  # ∝ m beyond the last


@pytest.mark.real_model
def test_estimated_layout_matches_smollm2(smollm2):
    """The tokenizer-free estimate (digit by digit) against SmolLM2's own tokens."""
    _, tokenizer, _ = smollm2
    defaults = common.default_settings()
    for task in defaults.tasks.values():
        candidates = defaults.lens.candidates_for(task)
        measured = cost.Layout.measure(task, tokenizer, candidates)
        estimated = cost.Layout.estimate(task, candidates, numbers="digits", bos=0)
        for key in ("example", "query", "answer"):
            assert getattr(estimated, key) == pytest.approx(getattr(measured, key), rel=0.02), key
        for key in ("bos", "lead", "shared_query", "query_max", "answer_max", "trie_nodes"):
            assert getattr(estimated, key) == getattr(measured, key), key


def test_big_models_need_the_gpus_the_weights_need():
    """8B fits one 80 GB GPU at the default settings, 70B needs two (docs/cost.md)."""
    defaults = common.default_settings()
    for name, gpus in (("llama-3.1-8b", 1), ("llama-3.1-70b", 2)):
        rows = cost.scale_table(cost.SHAPES[name], defaults)
        assert {row["gpus"] for row in rows} == {gpus}, name
        weights = cost.SHAPES[name].weight_bytes("bfloat16") / cost.GB
        assert all(row["peak_gb"] >= weights for row in rows)
        assert math.ceil(max(row["peak_gb"] for row in rows) / 77) == gpus


def _job_resources(text: str, rule: str) -> dict[str, int]:
    """{resource: value} of the first job of `rule` in a dry run's output."""
    block = text.split(f"rule {rule}:")[1].split("\n\n")[0]
    line = re.search(r"resources: (.*)", block).group(1)
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)(?:,|$)", line)}


@pytest.mark.parametrize(
    "shape, device, gpus", [("llama-3.1-70b", "cuda", 2), ("llama-3.1-8b", "cpu", 0)]
)
def test_slurm_resources_come_from_the_models_config(tmp_path, shape, device, gpus):
    """Each model job's mem_mb and gpu are the cost model's for that model, stage and task."""
    from test_workflow import small_config, snakemake, write_config

    folder = tmp_path / "source"
    folder.mkdir()
    config = cost_config(cost.SHAPES[shape])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"")  # a dry run reads no weights
    raw = small_config({"path": str(folder)})
    raw["forward"]["device"] = device
    write_config(tmp_path, raw)
    run = snakemake(tmp_path, "--dry-run", "results/heads/m/identity.parquet")
    assert run.returncode == 0, run.stderr
    settings = load_settings(raw)
    for rule in ("forward", "heads"):
        printed = _job_resources(run.stdout, rule)
        task = settings.tasks["identity"]
        expected = cost.job_resources(rule, config, settings, task, device, 80e9)
        assert {k: printed[k] for k in expected} == expected, rule
        assert printed["gpu"] == gpus
        weights = cost.SHAPES[shape].weight_bytes("bfloat16" if device == "cuda" else "float32")
        # On CPU the job holds the weights (converted from the stored dtype); on a GPU
        # the host only stages them, one shard at a time.
        if device == "cpu":
            assert printed["mem_mb"] * 2**20 > 1.5 * weights
        else:
            assert printed["mem_mb"] * 2**20 < 0.1 * weights


def cost_config(shape: cost.ModelShape) -> dict:
    """A Llama config.json of this shape."""
    return {
        "model_type": "llama",
        "num_hidden_layers": shape.layers,
        "hidden_size": shape.hidden,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "intermediate_size": shape.intermediate,
        "vocab_size": shape.vocab,
        "tie_word_embeddings": shape.tied,
        "max_position_embeddings": 8192,
    }


def test_device_map_splits_only_what_one_gpu_cannot_hold():
    gb = cost.GB
    h100 = (80 * gb, 80 * gb)  # (free, total)
    eight, seventy = cost.SHAPES["llama-3.1-8b"], cost.SHAPES["llama-3.1-70b"]
    assert cost.device_map(eight, "bfloat16", [h100, h100]) == {"device_map": {"": 0}}
    placed = cost.device_map(seventy, "bfloat16", [h100] * 4)
    assert placed["device_map"] == "auto"
    # 141 GB of weights: two GPUs of 72 GB each (10 % left on each), not four.
    assert placed["max_memory"] == {0: 72 * gb, 1: 72 * gb}
    assert sum(placed["max_memory"].values()) >= seventy.weight_bytes("bfloat16")
    with pytest.raises(ValueError, match=r"need 141\.1 GB"):
        cost.device_map(seventy, "bfloat16", [h100])
    # A GPU already half used by another process counts with what is free on it.
    assert cost.device_map(eight, "bfloat16", [(20 * gb, 80 * gb), h100])["device_map"] == "auto"
