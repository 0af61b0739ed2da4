"""Rule ideal_table: every model's surprisal beside the ideal learner's, and the excess bits."""

import polars as pl

from iclprobe.ideal import beside_model
from iclprobe.io import concat_tables, read_table, write_table
from iclprobe.logs import to_rule_log

to_rule_log(snakemake.log[0])
surprisal, metadata = concat_tables(snakemake.input.surprisal)
ideal = pl.concat([read_table(path) for path in snakemake.input.ideal], how="vertical_relaxed")
write_table(beside_model(surprisal, ideal), snakemake.output[0], metadata)
