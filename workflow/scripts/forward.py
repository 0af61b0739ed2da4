"""Rule forward: one teacher-forced pass per replicate; the logits cache."""

import torch

from iclprobe.config import Task, load_settings
from iclprobe.forward import SCORING_CONVENTION, run_forward
from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.logs import to_rule_log
from iclprobe.models import load_prepared

to_rule_log(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
# forward.batch_size is not a param: it moves log-probs by at most
# scoring.BATCH_BOUND_NATS, so changing it does not rerun the job.
settings = load_settings(snakemake.config, check_schema=False)
model, tokenizer, info = load_prepared(
    snakemake.input.model, dtype=snakemake.params.dtype, device=snakemake.params.device
)
prompt_metadata = read_metadata(snakemake.input.prompts)
table = run_forward(
    read_table(snakemake.input.prompts),
    model,
    tokenizer,
    model_name=snakemake.wildcards.model,
    task=Task.from_params(prompt_metadata["task"]),
    max_positions=info["max_positions"],
    batch_size=settings.forward.batch_size,
    top_k=snakemake.params.top_k,
)
metadata = {**prompt_metadata, "model": info, "scoring": SCORING_CONVENTION}
write_table(table, snakemake.output[0], metadata)
