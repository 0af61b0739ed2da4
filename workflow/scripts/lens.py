"""Rule lens: the logit lens at the decision positions, and its distribution over integers."""

import torch

from iclprobe.config import Task
from iclprobe.floor import floor_metadata
from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.lens import LENS_CONVENTION, LensPlan, run_lens
from iclprobe.logs import to_rule_log
from iclprobe.models import load_prepared

to_rule_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = snakemake.params
model, tokenizer, info = load_prepared(
    snakemake.input.model, dtype=params.dtype, device=params.device
)
forward_metadata = read_metadata(snakemake.input.forward)
plan = LensPlan(
    examples=list(params.examples),
    replicates=list(params.replicates),
    top_k=params.top_k,
    integer_replicates=list(params.integer_replicates),
    candidates=range(params.candidate_range[0], params.candidate_range[1] + 1)
    if params.integer_replicates
    else range(0),
)
lens, integers = run_lens(
    read_table(snakemake.input.forward),
    read_table(snakemake.input.prompts),
    model,
    tokenizer,
    task=Task.from_params(forward_metadata["task"]),
    plan=plan,
)
metadata = {**forward_metadata, "model": info, "lens": {**vars(plan), **LENS_CONVENTION}}
metadata["lens"].pop("candidates")
metadata["lens"]["candidate_range"] = plan.candidate_range()
metadata["lens"]["numerical_floor"] = floor_metadata("lens", lens["floor_nats"].max())
# Named outputs; `integers` only while the integer lens is enabled.
outputs = dict(snakemake.output.items())
write_table(lens, outputs["lens"], metadata)
if "integers" in outputs:
    write_table(integers, outputs["integers"], metadata)
