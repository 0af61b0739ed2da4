"""Rule lens_figures: the logit lens's top tokens and integer distribution by layer."""

from iclprobe.io import read_table
from iclprobe.logs import to_rule_log
from iclprobe.plots.lens import lens_figures

to_rule_log(snakemake.log[0])
inputs = dict(snakemake.input.items())  # `integers` only while the integer lens is enabled
integers = read_table(inputs["integers"]) if "integers" in inputs else None
lens_figures(
    read_table(inputs["lens"]),
    integers,
    dict(snakemake.output.items()),
    function=snakemake.params.function,
)
