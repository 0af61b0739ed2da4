"""Where the canonical parts of a Hugging Face causal LM live, per architecture.

All knowledge of HF module names is here (the idea of TransformerLens's
architecture adapters): one table row per architecture maps the canonical parts
(blocks, final norm, unembedding, each block's attention output projection and
the two branches that write into the residual stream) to module paths, and
names the quirks (GPT-2's `Conv1D` stores its weight as (in, out); Gemma
normalises each branch's output before adding it to the residual stream and
scales embeddings by sqrt(d); Gemma 2 soft-caps its logits; embeddings may be
tied to the unembedding). Stages ask an `Anatomy`, never the model.

Shape glossary (used in comments across the analysis modules):
    B  batch (rows run together)          S  sequence positions in one call
    P  cached prefix length               d  d_model, the residual width
    L  number of blocks                   H  query heads per block
    D  head dimension (H * D = attention width)
    V  vocabulary size                    K  a restricted set of vocabulary rows

Layer convention: layer 0 is the residual stream entering block 1 (token
embedding, plus position embedding and scale where the architecture has them),
layer ℓ (1…L) the output of block ℓ, so the read-out of layer L is the model's
own output. HF's `hidden_states[-1]` already has the final norm applied; the
anatomy never uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

NormKind = Literal["rms", "rms_one_plus", "layer"]


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no anatomy; the message lists the supported ones."""


@dataclass(frozen=True)
class _Parts:
    """Module paths of one architecture, relative to the model or to a block."""

    blocks: str  # ModuleList of decoder blocks, from the model
    final_norm: str  # from the model
    unembed: str  # from the model
    attn_out: str  # from a block: the projection whose input holds the heads side by side
    attn_branch: str  # from a block: the module whose output is added to the residual stream
    mlp_branch: str  # likewise for the MLP
    norm: NormKind  # how the final norm (and Gemma's branch norms) compute
    conv1d: bool = False  # GPT-2: attn_out.weight is (in, out), not (out, in)


_LLAMA = _Parts(
    blocks="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    attn_out="self_attn.o_proj",
    attn_branch="self_attn.o_proj",
    mlp_branch="mlp",
    norm="rms",
)
_GEMMA = _Parts(
    blocks="model.layers",
    final_norm="model.norm",
    unembed="lm_head",
    attn_out="self_attn.o_proj",
    # Gemma 2/3 normalise each branch before the residual add (the "post" norms).
    attn_branch="post_attention_layernorm",
    mlp_branch="post_feedforward_layernorm",
    norm="rms_one_plus",
)

# model_type (config.model_type) -> parts. Each row is tested with a tiny random
# model in tests/test_anatomy.py; SmolLM2 (llama) is tested for real.
ARCHITECTURES: dict[str, _Parts] = {
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,
    "gpt2": _Parts(
        blocks="transformer.h",
        final_norm="transformer.ln_f",
        unembed="lm_head",
        attn_out="attn.c_proj",
        attn_branch="attn.c_proj",
        mlp_branch="mlp",
        norm="layer",
        conv1d=True,
    ),
    "gpt_neox": _Parts(
        blocks="gpt_neox.layers",
        final_norm="gpt_neox.final_layer_norm",
        unembed="lm_head",
        attn_out="attention.dense",
        attn_branch="attention.dense",
        mlp_branch="mlp",
        norm="layer",
    ),
}


@dataclass(frozen=True)
class Anatomy:
    """The canonical parts of one loaded model.

    `blocks[i]` is block i + 1 in the layer convention above. Per block,
    `attn_out[i]` is the projection whose input (B, S, H*D) holds the heads
    side by side; `attn_branch[i]` and `mlp_branch[i]` are the modules whose
    outputs (B, S, d) are added to the residual stream, so that

        resid[ℓ] = resid[ℓ-1] + attn_branch[ℓ](…) + mlp_branch[ℓ](…)

    holds for every architecture here (GPT-NeoX's parallel residual included).
    """

    architecture: str
    model: nn.Module
    blocks: tuple[nn.Module, ...]
    final_norm: nn.Module
    unembed: nn.Linear
    attn_out: tuple[nn.Module, ...]
    attn_branch: tuple[nn.Module, ...]
    mlp_branch: tuple[nn.Module, ...]
    norm: NormKind
    conv1d: bool
    n_heads: int
    head_dim: int
    d_model: int
    logit_softcap: float | None

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def branch_norm(self) -> bool:
        """True where each branch passes through a norm before the residual add (Gemma)."""
        return self.attn_branch[0] is not self.attn_out[0]

    def head_weights(self, layer: int) -> torch.Tensor:
        """Block `layer`'s (1-based) output projection split by head: (H, D, d).

        Head h's output is z_h @ W[h] for its slice z_h (…, D) of the projection's input.
        """
        module = self.attn_out[layer - 1]
        weight = module.weight  # Linear: (d, H*D); GPT-2 Conv1D: (H*D, d)
        per_input = weight if self.conv1d else weight.T  # (H*D, d)
        return per_input.reshape(self.n_heads, self.head_dim, -1)  # (H, D, d)

    def head_bias(self, layer: int) -> torch.Tensor | None:
        """The output projection's bias (d,), written once per position, not per head."""
        return getattr(self.attn_out[layer - 1], "bias", None)


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for part in path.split("."):
        module = getattr(module, part)
    return module


def anatomy_of(model: nn.Module) -> Anatomy:
    """The anatomy of `model`; UnsupportedArchitectureError names the supported ones."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    parts = ARCHITECTURES.get(model_type)
    if parts is None:
        raise UnsupportedArchitectureError(
            f"architecture {model_type!r} ({type(model).__name__}) has no anatomy in iclprobe; "
            f"supported: {', '.join(sorted(ARCHITECTURES))}. Add a row to "
            "iclprobe.anatomy.ARCHITECTURES and a tiny-model test for it"
        )
    blocks = tuple(_get(model, parts.blocks))
    n_heads = (
        config.num_attention_heads if hasattr(config, "num_attention_heads") else config.n_head
    )
    d_model = config.hidden_size if hasattr(config, "hidden_size") else config.n_embd
    head_dim = getattr(config, "head_dim", None) or d_model // n_heads
    return Anatomy(
        architecture=model_type,
        model=model,
        blocks=blocks,
        final_norm=_get(model, parts.final_norm),
        unembed=_get(model, parts.unembed),
        attn_out=tuple(_get(b, parts.attn_out) for b in blocks),
        attn_branch=tuple(_get(b, parts.attn_branch) for b in blocks),
        mlp_branch=tuple(_get(b, parts.mlp_branch) for b in blocks),
        norm=parts.norm,
        conv1d=parts.conv1d,
        n_heads=n_heads,
        head_dim=head_dim,
        d_model=d_model,
        logit_softcap=getattr(config, "final_logit_softcapping", None),
    )
