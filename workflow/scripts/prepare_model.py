"""Rule prepare_model: resolve a hub id, local folder or packaged GGUF into a local folder."""

from iclprobe.logs import to_rule_log
from iclprobe.models import prepare_model

to_rule_log(snakemake.log[0])
prepare_model(snakemake.params.spec, snakemake.output[0])
