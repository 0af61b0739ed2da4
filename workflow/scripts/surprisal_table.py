"""Rule surprisal_table: all models and tasks, with replicate means, intervals and controls."""

import polars as pl

from iclprobe.io import read_table, write_table
from iclprobe.logs import to_rule_log
from iclprobe.surprisal import summary

to_rule_log(snakemake.log[0])
combined = pl.concat([read_table(p) for p in snakemake.input], how="vertical_relaxed")
write_table(summary(combined, snakemake.params.controls), snakemake.output[0])
