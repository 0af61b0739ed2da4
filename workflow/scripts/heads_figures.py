"""Rules heads_figures and heads_causal_figures: heatmaps per head and direct vs causal."""

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.plots import heads

to_rule_log(snakemake.log[0])
table = read_table(snakemake.input[0])
function = snakemake.params.function
if snakemake.rule == "heads_figures":
    heads.direct(table, snakemake.output[0], function)
else:
    heads.causal(table, snakemake.output.causal, function)
    heads.direct_vs_causal(table, snakemake.output.scatter, function)
