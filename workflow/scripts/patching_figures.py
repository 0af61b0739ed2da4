"""Rule patching_figures: probabilities and outcome classes against layer, one model and task."""

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.plots import patching as plots

to_rule_log(snakemake.log[0])
table = read_table(snakemake.input[0])
plots.probabilities(table, snakemake.output.probabilities, snakemake.params.function)
plots.outcomes(table, snakemake.output.outcomes, snakemake.params.function)
