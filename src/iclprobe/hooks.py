"""Reading and replacing activations, with hooks that are always removed.

PyTorch hooks are global state on the modules: one left behind by an error
would silently change every later forward pass. Every function here is a
context manager that removes its handles on exit, error or not (as
TransformerLens's `run_with_hooks` does).

Activations are addressed by the canonical names of `iclprobe.anatomy`:
- the residual stream at layer ℓ (0 = entering block 1, ℓ = output of block ℓ),
- the heads of block ℓ: the output projection's input, viewed (B, S, H, D),
- the two branches of block ℓ that are added to the residual stream (B, S, d).

`select` arguments pick what to keep from a (B, S, …) tensor (e.g. one position
per row), so a capture holds kilobytes, not the whole stream. What is captured
is gathered on the unembedding's device, where the read-outs use it (a model
split over GPUs runs its blocks on several).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from iclprobe.anatomy import Anatomy

Select = Callable[[torch.Tensor], torch.Tensor]
Edit = Callable[[torch.Tensor], torch.Tensor]


def _keep_all(t: torch.Tensor) -> torch.Tensor:
    return t


def _gather(anatomy: Anatomy, t: torch.Tensor) -> torch.Tensor:
    """A captured tensor, detached, on the unembedding's device (a no-op on one device)."""
    return t.detach().to(anatomy.unembed.weight.device)


@contextmanager
def hooked(
    pre: list[tuple[nn.Module, Callable]] = (), post: list[tuple[nn.Module, Callable]] = ()
) -> Iterator[None]:
    """Register forward pre-hooks (with kwargs) and forward hooks; remove them all on exit."""
    handles = []
    try:
        for module, fn in pre:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        for module, fn in post:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _with_first_input(args: tuple, kwargs: dict[str, Any], value: torch.Tensor):
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": value}


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _with_output_tensor(output, value: torch.Tensor):
    return (value, *output[1:]) if isinstance(output, tuple) else value


@contextmanager
def capture_residual(
    anatomy: Anatomy, select: Select = _keep_all, layers: list[int] | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield {layer: select(resid)} filled by the forward passes run inside.

    Layer 0 is the input of block 1; layer ℓ the output of block ℓ. A later
    pass inside the same block overwrites the earlier one's entries.
    """
    wanted = range(anatomy.n_layers + 1) if layers is None else layers
    store: dict[int, torch.Tensor] = {}
    pre, post = [], []
    for layer in wanted:
        if layer == 0:

            def read_input(module, args, kwargs):
                store[0] = _gather(anatomy, select(_first_input(args, kwargs)))

            pre.append((anatomy.blocks[0], read_input))
        else:

            def read_output(module, args, output, layer=layer):
                store[layer] = _gather(anatomy, select(_output_tensor(output)))

            post.append((anatomy.blocks[layer - 1], read_output))
    with hooked(pre, post):
        yield store


@contextmanager
def edit_residual(anatomy: Anatomy, layer: int, edit: Edit) -> Iterator[None]:
    """Replace the residual stream at `layer` by `edit(resid)` (B, S, d) in the passes inside."""
    if layer == 0:

        def edit_input(module, args, kwargs):
            return _with_first_input(args, kwargs, edit(_first_input(args, kwargs)))

        with hooked(pre=[(anatomy.blocks[0], edit_input)]):
            yield
    else:

        def edit_output(module, args, output):
            return _with_output_tensor(output, edit(_output_tensor(output)))

        with hooked(post=[(anatomy.blocks[layer - 1], edit_output)]):
            yield


def _split_heads(anatomy: Anatomy, z: torch.Tensor) -> torch.Tensor:
    return z.unflatten(-1, (anatomy.n_heads, anatomy.head_dim))  # (…, H*D) -> (…, H, D)


@contextmanager
def capture_heads(
    anatomy: Anatomy, select: Select = _keep_all, layers: list[int] | None = None
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield {layer: select(z) viewed (…, H, D)}: each head's input to the output projection."""
    wanted = range(1, anatomy.n_layers + 1) if layers is None else layers
    store: dict[int, torch.Tensor] = {}
    pre = []
    for layer in wanted:

        def read(module, args, kwargs, layer=layer):
            store[layer] = _gather(
                anatomy, _split_heads(anatomy, select(_first_input(args, kwargs)))
            )

        pre.append((anatomy.attn_out[layer - 1], read))
    with hooked(pre=pre):
        yield store


@contextmanager
def edit_heads(anatomy: Anatomy, layer: int, edit: Edit) -> Iterator[None]:
    """Replace the heads of block `layer` by `edit(z)`, z viewed (B, S, H, D), in the passes inside."""

    def edit_input(module, args, kwargs):
        z = _first_input(args, kwargs)  # (B, S, H*D)
        edited = edit(_split_heads(anatomy, z)).flatten(-2)  # (B, S, H*D)
        return _with_first_input(args, kwargs, edited)

    with hooked(pre=[(anatomy.attn_out[layer - 1], edit_input)]):
        yield


@contextmanager
def capture_branches(
    anatomy: Anatomy, select: Select = _keep_all
) -> Iterator[dict[str, dict[int, torch.Tensor]]]:
    """Yield {"attn": {layer: …}, "mlp": {layer: …}}: what each branch adds to the residual."""
    store: dict[str, dict[int, torch.Tensor]] = {"attn": {}, "mlp": {}}
    post = []
    for layer in range(1, anatomy.n_layers + 1):
        for kind, modules in (("attn", anatomy.attn_branch), ("mlp", anatomy.mlp_branch)):

            def read(module, args, output, kind=kind, layer=layer):
                store[kind][layer] = _gather(anatomy, select(_output_tensor(output)))

            post.append((modules[layer - 1], read))
    with hooked(post=post):
        yield store
