"""Rule task_figures: the seed's figures for one model and task, with the ideal learner."""

from pathlib import Path

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.plots.learning import task_figures

to_rule_log(snakemake.log[0])
control = read_table(snakemake.input.control) if snakemake.input.control else None
task_figures(
    read_table(snakemake.input.surprisal),
    read_table(snakemake.input.bayes),
    Path(snakemake.output[0]).parent,
    control=control,
    function=snakemake.params.function,
    ideal=read_table(snakemake.input.ideal),
)
