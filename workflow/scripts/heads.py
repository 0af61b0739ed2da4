"""Rule heads: direct logit attribution of every head and mean-ablation of each one."""

import torch

from iclprobe.floor import floor_metadata
from iclprobe.heads import ABLATION, CENTRING, run_heads
from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.logs import to_rule_log
from iclprobe.models import load_prepared

to_rule_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
params = snakemake.params
model, tokenizer, info = load_prepared(
    snakemake.input.model, dtype=params.dtype, device=params.device
)
table = run_heads(
    read_table(snakemake.input.prompts),
    read_table(snakemake.input.forward),
    model,
    tokenizer,
    model_name=snakemake.wildcards.model,
    examples=params.examples,
    replicates=params.replicates,
    causal_examples=params.causal_examples,
    causal_replicates=params.causal_replicates,
    batch_rows=snakemake.config["heads"]["causal"]["batch_rows"],
)
settings = {
    "examples": params.examples,
    "replicates": params.replicates,
    "causal_examples": params.causal_examples,
    "causal_replicates": params.causal_replicates,
    "centring": CENTRING,
    "ablation": ABLATION,
    "numerical_floor": floor_metadata("heads", table["floor_nats"].max()),
}
metadata = {**read_metadata(snakemake.input.forward), "model": info, "heads": settings}
write_table(table, snakemake.output[0], metadata)
