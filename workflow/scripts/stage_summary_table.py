"""Rule stage_summary_table: one analysis stage's numbers per (model, task), for the report."""

import polars as pl

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.summaries import STAGE_SUMMARIES, write_html_table

to_rule_log(snakemake.log[0])
summarise, title, description = STAGE_SUMMARIES[snakemake.wildcards.stage]
tables = pl.concat([read_table(path) for path in snakemake.input], how="diagonal_relaxed")
write_html_table(summarise(tables), snakemake.output[0], title, description)
