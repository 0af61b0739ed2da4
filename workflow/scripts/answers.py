"""Rule answers: the run's answers in sentences for the report's first page, and their tables."""

from iclprobe.answers import answers, answers_rst
from iclprobe.ideal import information_summary
from iclprobe.io import atomic_output, read_table
from iclprobe.logs import to_rule_log
from iclprobe.summaries import (
    constancy_pairs_summary,
    constancy_summary,
    ideal_summary,
    write_html_table,
)

to_rule_log(snakemake.log[0])
units = read_table(snakemake.input.units)
pairs = read_table(snakemake.input.pairs)
information = information_summary(read_table(snakemake.input.ideal))
with atomic_output(snakemake.output.answers, suffix=".rst") as tmp:
    tmp.write_text(answers_rst(answers(units, pairs, information)), encoding="utf-8")
write_html_table(
    constancy_summary(units),
    snakemake.output.constancy,
    "Is c a constant? c per method and task",
    "c with its bootstrap interval over replicates (c_lo–c_hi); ln 2 inside: whether ln 2 lies "
    "in it; P(A) at last: the model's mean probability of the correct answer at the last "
    "example; counted: the task is learned (P(A) at last reaches the threshold), not a control, "
    "and the method's fit is informative; otherwise 'not counted because' says why.",
)
write_html_table(
    constancy_pairs_summary(pairs),
    snakemake.output.pairs,
    "Is c a constant? The test of equal c between every two counted tasks",
    "c_a − c_b with its bootstrap percentile interval (each task's replicates resampled on "
    "their own); p: two-sided bootstrap p-value; p (Holm): adjusted over the method's pairs; "
    "differs: p (Holm) below the family-wise alpha.",
)
write_html_table(
    ideal_summary(information),
    snakemake.output.ideal,
    "Information needed: the model against the ideal learner",
    "I_N: the information to learn the task over its N examples (sum of surprisals, bits), mean "
    "and central 95% range over replicates, for the model and for the ideal learner (a "
    "Bayes-optimal learner knowing the rules a·x + b of a grid, plus the task's own rule where "
    "added, and 'none of these'); excess: the model's extra bits; uniform code: N·log2 |Y|.",
)
