"""The benchmark harness's own arithmetic and instruments (no timings are asserted).

The FLOP model is checked against torch's FlopCounterMode on a tiny Llama, the
stage hook against a known sequence of passes in a child process, and the
Snakemake log parser against a log excerpt.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import tiny_llama

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common
import scratch


def test_forward_flops_match_torch_flop_counter():
    """Linear + unembedding exactly as counted; attention half the counter's full square.

    Eager attention: the counter has no formula for the CPU flash-attention kernel,
    but counts the eager path's batched matmuls (QKᵀ and AV over the whole square).
    """
    model = tiny_llama(vocab_size=50)
    model.set_attn_implementation("eager")
    shapes = common.Shapes.of(model.config)
    length, keep = 17, [3, 8, 16]
    ids = torch.randint(0, 50, (1, length))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(input_ids=ids, logits_to_keep=torch.tensor(keep), use_cache=False)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    matmul = sum(n for op, n in counts.items() if op.split(".")[-1] in ("mm", "addmm"))
    attention = sum(n for op, n in counts.items() if op.split(".")[-1] == "bmm")
    ours = shapes.forward_flops(length, len(keep))
    assert matmul == ours["linear"] + ours["unembed"]
    # The eager path computes the full S × S square; the useful causal part is
    # the S(S+1)/2 pairs with key ≤ query.
    full_square = 4 * shapes.layers * shapes.heads * shapes.head_dim * length**2
    assert attention == full_square
    assert ours["attention"] == full_square * (length + 1) // (2 * length)


def test_stage_hook_counts_positions_and_time(tmp_path):
    """The sitecustomize hook wraps run_* of the named module and counts embedding inputs."""
    (tmp_path / "fake_stage.py").write_text(
        "import torch\n"
        "from conftest import tiny_llama\n"
        "def run_fake():\n"
        "    model = tiny_llama(vocab_size=40)\n"
        "    with torch.no_grad():\n"
        "        model(input_ids=torch.zeros((3, 5), dtype=torch.long))\n"
        "        model(input_ids=torch.zeros((1, 7), dtype=torch.long))\n"
        "def helper():\n"
        "    return 1\n"
    )
    record = tmp_path / "record.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(BENCHMARKS / "hook"), str(tmp_path), str(Path(__file__).parent)]
            + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
        "ICLPROBE_BENCH_STAGE": "fake_stage",
        "ICLPROBE_BENCH_OUT": str(record),
    }
    code = "import fake_stage\nfake_stage.helper()\nfake_stage.run_fake()\n"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
    result = json.loads(record.read_text())
    assert result["entry_points"] == ["run_fake"]
    assert result["calls"] == 1
    assert (result["positions"], result["passes"]) == (3 * 5 + 7, 2)
    assert result["process_wall_s"] >= result["wall_s"] > 0


def test_stage_hook_is_inert_without_its_variables(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(BENCHMARKS / "hook")}
    env.pop("ICLPROBE_BENCH_OUT", None)
    done = subprocess.run(
        [sys.executable, "-c", "import sys; print(len(sys.meta_path))"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    plain = subprocess.run(
        [sys.executable, "-c", "import sys; print(len(sys.meta_path))"],
        env={k: v for k, v in env.items() if k != "PYTHONPATH"},
        check=True,
        capture_output=True,
        text=True,
    )
    assert done.stdout == plain.stdout


LOG = """\
[Sun Nov 29 11:30:46 2026]
localrule prompts:
    output: results/prompts/a.parquet
    jobid: 3
    wildcards: task=a
[Sun Nov 29 11:30:47 2026]
rule forward:
    output: results/forward/m/a.parquet
    jobid: 1
[Sun Nov 29 11:30:49 2026]
Finished jobid: 3 (Rule: prompts)
[Sun Nov 29 11:31:07 2026]
Finished jobid: 1 (Rule: forward)
"""


def test_job_times_from_a_snakemake_log():
    assert scratch.job_times(LOG) == {
        "forward": {"jobs": 1, "sum_s": 20.0, "max_s": 20.0},
        "prompts": {"jobs": 1, "sum_s": 3.0, "max_s": 3.0},
    }


@pytest.mark.parametrize("value, text", [(0.5, "0.5"), (1234.5, "1,234"), (3e-6, "3.0e-06")])
def test_table_numbers(value, text):
    assert common.fmt(value) == text


def test_cost_benchmark_quick(tmp_path, tiny_llama_folder):
    """benchmarks/cost.py --quick on a tiny prepared model and the small Llama shape: every
    stage of both is run, measured and predicted (no timing is asserted)."""
    from iclprobe.models import prepare_model

    model = tmp_path / "tiny-prepared"
    prepare_model({"path": str(tiny_llama_folder)}, model)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "cost.py"), "--quick", "--model", str(model)]
        + ["--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "cost.json").read_text())
    rows = result["tables"][0]["rows"]
    assert [(r["shape"], r["stage"]) for r in rows] == [
        (shape, stage) for shape in ("tiny-prepared", "llama1b") for stage in cost_stages()
    ]
    for row in rows:
        assert row["time_model_s"] > 0 and row["time_cpu_s"] > 0
        assert row["mem_model_mb"] > 0 and row["mem_tracked_mb"] > 0
        # Positions the model counts against those the passes received (the quick
        # settings look at few examples, whose answers may be shorter than the mean).
        assert row["tokens_model"] == pytest.approx(row["tokens_run"], rel=0.25)


def cost_stages() -> list[str]:
    return ["forward", "probe", "lens", "heads", "patching"]
