"""Rule probe: the model's answer to every query x after its first k examples."""

import torch

from iclprobe.config import Task, load_settings
from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.logs import to_rule_log
from iclprobe.models import load_prepared
from iclprobe.probe import PROBE_CONVENTION, run_probe

to_rule_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
settings = load_settings(snakemake.config, check_schema=False)
model, tokenizer, info = load_prepared(
    snakemake.input.model, dtype=snakemake.params.dtype, device=snakemake.params.device
)
forward_metadata = read_metadata(snakemake.input.forward)
ks, replicates = list(snakemake.params.ks), list(snakemake.params.replicates)
table = run_probe(
    read_table(snakemake.input.prompts),
    model,
    tokenizer,
    model_name=snakemake.wildcards.model,
    task=Task.from_params(forward_metadata["task"]),
    ks=ks,
    replicates=replicates,
    batch_size=settings.probe.batch_size,
)
metadata = {
    **forward_metadata,
    "model": info,
    "probe": {"ks": ks, "replicates": replicates, "convention": PROBE_CONVENTION},
}
write_table(table, snakemake.output[0], metadata)
