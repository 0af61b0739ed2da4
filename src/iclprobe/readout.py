"""From a residual-stream vector to logits: the one read-out every analysis uses.

`readout` maps the residual stream at any layer through the final norm and
the unembedding (and Gemma 2's logit soft-cap), exactly as the model maps its
last layer: the logit lens is `readout` at layer ℓ < L, the model's own logits
are `readout` at layer L. `rows` restricts the unembedding to some vocabulary
rows (K of V), which is how the lens scores candidate integers without the
cost of a full 49k-row matmul per layer and position.

`FrozenNorm` is the final norm made linear by freezing its statistics (the
RMS, or the standard deviation and mean-centring of LayerNorm) at a clean run's
residual. Then the read-out of a sum of components is the sum of their
read-outs, which is what direct logit attribution needs; for Gemma the same
is done with each block's branch norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from iclprobe.anatomy import Anatomy, NormKind
from iclprobe.cost import MEAN_CHUNK_ROWS  # the cost model counts its memory


def readout(
    anatomy: Anatomy, resid: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Logits (…, V), or (…, K) for vocabulary `rows` (K,), of residual vectors (…, d)."""
    normed = anatomy.final_norm(resid)  # (…, d)
    weight = anatomy.unembed.weight  # (V, d)
    bias = anatomy.unembed.bias  # (V,) or None
    if rows is not None:
        weight = weight[rows]  # (K, d)
        bias = None if bias is None else bias[rows]
    logits = nn.functional.linear(normed.to(weight.dtype), weight, bias)  # (…, V or K)
    if anatomy.logit_softcap is not None:
        cap = anatomy.logit_softcap
        logits = torch.tanh(logits / cap) * cap
    return logits


def _eps(module: nn.Module) -> float:
    for name in ("variance_epsilon", "eps"):
        if hasattr(module, name):
            return float(getattr(module, name))
    raise AttributeError(f"{type(module).__name__} has no epsilon attribute")


@dataclass(frozen=True)
class FrozenNorm:
    """A norm with its statistics frozen at one input: linear in what it is applied to.

    For inputs whose sum is the clean input, `sum(frozen(c) for c) + frozen.bias`
    equals the norm of the clean input (up to float rounding).
    """

    kind: NormKind
    scale: torch.Tensor  # (…, 1): 1 / RMS or 1 / std of the clean input
    weight: torch.Tensor  # (d,): the effective elementwise gain
    bias: torch.Tensor | None  # (d,): LayerNorm's bias, a constant component

    def __call__(self, component: torch.Tensor) -> torch.Tensor:
        """component (…, n, d) or (…, d), broadcast against the clean input's leading dims."""
        c = component.float()
        if self.kind == "layer":
            c = c - c.mean(-1, keepdim=True)
        scale = self.scale if component.dim() == self.scale.dim() else self.scale.unsqueeze(-2)
        return c * scale * self.weight


def freeze_norm(module: nn.Module, kind: NormKind, clean: torch.Tensor) -> FrozenNorm:
    """Freeze `module`'s statistics at `clean` (…, d)."""
    x = clean.float()
    eps = _eps(module)
    weight = module.weight.float().to(x.device)
    if kind == "layer":
        centred = x - x.mean(-1, keepdim=True)
        scale = torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps)  # (…, 1)
        bias = None if module.bias is None else module.bias.float().to(x.device)
        return FrozenNorm(kind, scale, weight, bias)
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # (…, 1)
    gain = 1.0 + weight if kind == "rms_one_plus" else weight
    return FrozenNorm(kind, scale, gain, None)


def freeze_final_norm(anatomy: Anatomy, clean: torch.Tensor) -> FrozenNorm:
    return freeze_norm(anatomy.final_norm, anatomy.norm, clean)


def vocabulary_mean(weight: torch.Tensor, chunk_rows: int | None = MEAN_CHUNK_ROWS) -> torch.Tensor:
    """The mean row (d,) in float32 of an unembedding `weight` (V, d).

    A float32 weight is averaged as it is (no copy is made); another dtype is
    converted `chunk_rows` rows at a time (None: all at once), which moves the
    mean only by float32 rounding (tests/test_heads.py checks both ways agree).
    """
    if weight.dtype == torch.float32 or chunk_rows is None:
        return weight.float().mean(0)
    total = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)  # (d,)
    for first in range(0, weight.shape[0], chunk_rows):
        total += weight[first : first + chunk_rows].float().sum(0)
    return total / weight.shape[0]


def centred_unembedding(
    anatomy: Anatomy, token_ids: torch.Tensor, chunk_rows: int | None = MEAN_CHUNK_ROWS
) -> torch.Tensor:
    """Unembedding rows minus the vocabulary's mean row: (…, d) for token_ids (…).

    Dotted with the final-normed residual this gives the logit minus the mean
    logit over the vocabulary (the bias aside): a centring that does not
    depend on which other token one compares with.
    """
    weight = anatomy.unembed.weight  # (V, d)
    return weight[token_ids].float() - vocabulary_mean(weight, chunk_rows)  # (…, d)


def centred_bias(anatomy: Anatomy, token_ids: torch.Tensor) -> torch.Tensor | None:
    """The unembedding bias of token_ids minus its vocabulary mean, or None."""
    bias = anatomy.unembed.bias
    if bias is None:
        return None
    bias = bias.float()
    return bias[token_ids] - bias.mean()
