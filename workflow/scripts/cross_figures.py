"""Rule cross_figures: fitted c across models and tasks, against ln 2."""

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.plots.learning import c_by_model_and_task

to_rule_log(snakemake.log[0])
c_by_model_and_task(read_table(snakemake.input.bayes), snakemake.output[0])
