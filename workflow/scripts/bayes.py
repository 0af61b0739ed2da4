"""Rule bayes: fit the two-hypothesis learner's c and theta0 to the LM's P(A) series."""

from iclprobe.bayes import fit_table
from iclprobe.io import read_metadata, read_table, write_table
from iclprobe.logs import to_rule_log

to_rule_log(snakemake.log[0])
fits = fit_table(
    read_table(snakemake.input[0]),
    methods=snakemake.params.methods,
    n_boot=snakemake.params.n_boot,
    seed=snakemake.params.seed,
    level=snakemake.params.level,
)
write_table(fits, snakemake.output[0], read_metadata(snakemake.input[0]))
