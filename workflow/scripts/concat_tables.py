"""Concatenate per-(model, task) tables into one."""

import polars as pl

from iclprobe.io import read_table, write_table
from iclprobe.logs import to_rule_log

to_rule_log(snakemake.log[0])
combined = pl.concat([read_table(p) for p in snakemake.input], how="vertical_relaxed")
write_table(combined, snakemake.output[0])
