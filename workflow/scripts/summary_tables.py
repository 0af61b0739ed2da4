"""Rule summary_tables: the per-(model, task) summaries the report shows first."""

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.summaries import bayes_summary, surprisal_summary, write_html_table

to_rule_log(snakemake.log[0])
write_html_table(
    surprisal_summary(read_table(snakemake.input.surprisal)),
    snakemake.output.surprisal,
    "Surprisal and the information to learn each task",
    "Means over replicates; surprisal in nats per answer (lead space, digits and terminator); "
    "I_N in bits over all N examples.",
)
write_html_table(
    bayes_summary(read_table(snakemake.input.bayes)),
    snakemake.output.bayes,
    "The fitted two-hypothesis Bayesian learner",
    "c: sensitivity (probability an example is consistent with the rule under it); c_lo–c_hi: "
    "bootstrap interval over replicates; theta0: prior belief in the rule; c_minus_ln2: distance "
    "from the seed's c = ln 2; informative: whether the fit says more than a flat line (fit_note "
    "says why not); r2_vs_flat: share of the mean curve's variance the learner explains; "
    "control_c and c_differs_from_control: the shuffled control's c and whether the two "
    "intervals are disjoint; rmse in rmse_units.",
)
