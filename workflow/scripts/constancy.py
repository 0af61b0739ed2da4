"""Rule constancy: c of every learned task and model, and the pairwise test of equal c."""

from iclprobe.constancy import CORRECTION, pairwise_tests, units
from iclprobe.io import read_table, write_table
from iclprobe.logs import to_rule_log

to_rule_log(snakemake.log[0])
params = snakemake.params
surprisal = read_table(snakemake.input.surprisal)
table = units(read_table(snakemake.input.bayes), surprisal, params.min_p_correct)
pairs = pairwise_tests(
    table, surprisal, n_boot=params.n_boot, seed=params.seed, alpha=params.alpha, level=params.level
)
settings = {
    "min_p_correct": params.min_p_correct,
    "n_boot": params.n_boot,
    "alpha": params.alpha,
    "correction": CORRECTION,
    "seed": params.seed,
}
write_table(table, snakemake.output.units, {"constancy": settings})
write_table(pairs, snakemake.output.pairs, {"constancy": settings})
