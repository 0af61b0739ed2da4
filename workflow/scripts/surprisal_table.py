"""Rule surprisal_table: all models and tasks, with replicate means, intervals and controls."""

from iclprobe.io import concat_tables, write_table
from iclprobe.logs import to_rule_log
from iclprobe.surprisal import summary

to_rule_log(snakemake.log[0])
combined, metadata = concat_tables(snakemake.input)
write_table(summary(combined, snakemake.params.controls), snakemake.output[0], metadata)
