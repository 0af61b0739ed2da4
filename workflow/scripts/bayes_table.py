"""Rule bayes_table: every fit, with its provenance and beside its shuffled control's fit."""

from iclprobe.bayes import compare_with_controls
from iclprobe.io import concat_tables, write_table
from iclprobe.logs import to_rule_log

to_rule_log(snakemake.log[0])
combined, metadata = concat_tables(snakemake.input)
write_table(
    compare_with_controls(combined, snakemake.params.controls), snakemake.output[0], metadata
)
