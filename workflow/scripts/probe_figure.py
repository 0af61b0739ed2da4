"""Rule probe_figure: greedy answers and residuals against x, one column per k."""

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.plots.probe import probe

to_rule_log(snakemake.log[0])
probe(read_table(snakemake.input[0]), snakemake.output[0], function=snakemake.params.function)
