"""Rule cross_figures: fitted c across models and tasks against ln 2, the test of equal c,
and the information the model needed against the ideal learner's."""

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.plots.constancy import c_constancy
from iclprobe.plots.ideal import ideal_information
from iclprobe.plots.learning import c_by_model_and_task

to_rule_log(snakemake.log[0])
c_by_model_and_task(read_table(snakemake.input.bayes), snakemake.output.c)
c_constancy(
    read_table(snakemake.input.units), read_table(snakemake.input.pairs), snakemake.output.constancy
)
ideal_information(read_table(snakemake.input.ideal), snakemake.output.ideal)
