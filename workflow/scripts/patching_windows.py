"""Rule patching_windows: where the task and where the answer lead, every model and task."""

import polars as pl

from iclprobe.io import read_table, write_table
from iclprobe.logs import to_rule_log
from iclprobe.patching_windows import windows
from iclprobe.plots import patching as plots

to_rule_log(snakemake.log[0])
table = windows(pl.concat([read_table(p) for p in snakemake.input], how="vertical_relaxed"))
write_table(table, snakemake.output.table)
plots.windows(table, snakemake.output.figure)
