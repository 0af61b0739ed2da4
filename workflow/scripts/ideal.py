"""Rule ideal: the Bayes-optimal learner's surprisal on one task's prompts."""

from iclprobe.config import Task
from iclprobe.ideal import AffineFamily, ideal_learner
from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.logs import to_rule_log

to_rule_log(snakemake.log[0])
family = snakemake.params.family
metadata = read_metadata(snakemake.input[0])
table = ideal_learner(
    read_table(snakemake.input[0]),
    Task.from_params(metadata["task"]),
    AffineFamily(tuple(family["slopes"]), tuple(family["intercepts"])),
    none_prior=family["none_prior"],
    include_task_rule=family["include_task_rule"],
)
write_table(table, snakemake.output[0], {"task": metadata["task"], "ideal_learner": family})
