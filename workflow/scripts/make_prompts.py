"""Rule prompts: draw the x values of every replicate and write the prompt texts."""

from iclprobe.config import Task
from iclprobe.io import write_table
from iclprobe.logs import to_rule_log
from iclprobe.prompts import make_prompts

to_rule_log(snakemake.log[0])
task = Task.from_params(snakemake.params.task)
prompts = make_prompts(task)
write_table(prompts, snakemake.output[0], {"task": task.as_params()})
