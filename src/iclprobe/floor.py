"""The numerical floor: how far a stage's batched, cached float32 path is from a plain pass.

Every difference the heads, patching and lens stages report is computed by a
cached, batched path whose float32 sums run in another order than a plain
Hugging Face pass over the whole text; the two disagree by rounding. Each job
measures that disagreement on a control that must change nothing, in the
same shapes as its measurements:

- heads: one unedited row in every ablation batch, against the clean log P
  of the forward stage (a plain pass);
- patching: per replicate, the first pair's target patched with its own
  activations, at every layer, against the same tree's unpatched copy;
- lens: the last layer's read-out of the answer's first token, against the
  forward stage's log-probability of that token.

The floor is the largest deviation of the job's controls, in nats of
log-probability, times `SAFETY` (a control samples the rounding of a few
rows; the rows it stands for round differently), and at least `MIN_NATS`. A difference of two
log-probabilities within the floor is not resolved: it is reported, marked,
and kept out of rankings and of what the summaries and figures call a finding.
No torch here: the summaries and figures read the columns this defines.
"""

from __future__ import annotations

import math

# A control samples the rounding of its own rows. Measured on SmolLM2-135M in float32
# (benchmarks/numerical_floor.py, seed task): the 540 head ablations of the default
# config's last example erred against plain passes by at most 1.5e-5 nats, 0.64 times
# their batches' unedited rows' deviation (2.3e-5); twice the control leaves room for
# rows that round further than it does.
SAFETY = 2.0


# The floor never goes below what float32 resolves in a log-probability of order 1-10
# (machine epsilon 1.2e-7 times such a value): a control that happens to match to the
# bit (tiny models, some architectures) does not make every edited row exact.
MIN_NATS = 1e-6


def floor_nats(deviations) -> float | None:
    """The floor from a job's control deviations (nats): their maximum × SAFETY, at least
    MIN_NATS; None without a control."""
    values = [float(d) for d in deviations]
    return None if not values else max(SAFETY * max(values), MIN_NATS)


def resolvable(p: float, floor: float) -> float:
    """The smallest change of a probability p that the floor resolves: p · (e^floor − 1)."""
    return p * math.expm1(floor)


# How each stage measures its floor, recorded in its tables' metadata.
METHODS = {
    "heads": "one unedited row in every mean-ablation batch; |its log P(answer) - the forward "
    "stage's| (a plain pass)",
    "patching": "per replicate, the first pair's target patched with its own activations at "
    "every layer, in the same tree; |patched - unpatched log P| of every candidate on its path",
    "lens": "per position read, |log P(first answer token) at the last layer - the forward "
    "stage's|",
}


def floor_metadata(stage: str, floor: float | None) -> dict:
    """What a table's metadata says of its floor (the model's dtype and device sit beside it)."""
    return {"nats": floor, "safety": SAFETY, "method": METHODS[stage]}
