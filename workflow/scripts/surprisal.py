"""Rule surprisal: surprisal in nats and bits, and cumulative information, per replicate."""

from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.logs import to_rule_log
from iclprobe.surprisal import per_replicate

to_rule_log(snakemake.log[0])
table = per_replicate(read_table(snakemake.input[0]))
write_table(table, snakemake.output[0], read_metadata(snakemake.input[0]))
