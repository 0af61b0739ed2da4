"""Rule patching: the task's residual stream, layer by layer, into another context's prompts."""

import logging
import time

import torch

from iclprobe.config import Task
from iclprobe.floor import floor_metadata
from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.logs import to_rule_log
from iclprobe.models import load_prepared
from iclprobe.patching import PATCHING_CONVENTION, ZERO_SHOT, run_patching

to_rule_log(snakemake.log[0])
started, cpu = time.monotonic(), time.process_time()
torch.set_num_threads(snakemake.threads)
params = snakemake.params
model, tokenizer, info = load_prepared(
    snakemake.input.model, dtype=params.dtype, device=params.device
)
task = Task.from_params(read_metadata(snakemake.input.prompts)["task"])
target_task, target_prompts = None, None
if params.patch_target != ZERO_SHOT:
    target_task = Task.from_params(read_metadata(snakemake.input.target_prompts)["task"])
    target_prompts = read_table(snakemake.input.target_prompts)
table = run_patching(
    read_table(snakemake.input.prompts),
    target_prompts,
    model,
    tokenizer,
    model_name=snakemake.wildcards.model,
    task=task,
    target_task=target_task,
    replicates=list(params.replicates),
    pairs=params.pairs,
    context_examples=params.context_examples,
)
settings = {
    "target_context": params.patch_target,
    "replicates": list(params.replicates),
    "pairs": params.pairs,
    "context_examples": params.context_examples,
    "convention": PATCHING_CONVENTION,
    "numerical_floor": floor_metadata("patching", table["floor_nats"].max()),
}
metadata = {**read_metadata(snakemake.input.forward), "model": info, "patching": settings}
write_table(table, snakemake.output[0], metadata)
logging.getLogger("patching").info(
    "%d rows in %.1f s wall, %.1f s CPU, model loading included",
    table.height,
    time.monotonic() - started,
    time.process_time() - cpu,
)
