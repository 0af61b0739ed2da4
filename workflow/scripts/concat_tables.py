"""Concatenate per-(model, task) tables into one, keeping each one's provenance."""

from iclprobe.io import concat_tables, write_table
from iclprobe.logs import to_rule_log

to_rule_log(snakemake.log[0])
combined, metadata = concat_tables(snakemake.input)
write_table(combined, snakemake.output[0], metadata)
