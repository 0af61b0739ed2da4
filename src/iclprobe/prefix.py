"""Many continuations of one prefix, with the prefix's KV cache computed once.

Probe queries, lens candidates, head ablations and patches all share a long
context and differ in a few tokens after it. `encode_prefix` runs the context
once; `run_suffixes` runs a batch of right-padded continuations over copies of
its cache; `greedy` decodes a few tokens more, and `greedy_from` decodes on
from inside a finished run (where a forced answer leaves the greedy path)
without running the query again. Each gives exactly what a plain pass over
prefix + continuation would (tests/test_prefix.py checks this
against Hugging Face on every supported architecture).

Right padding is safe here: a real token never attends to the pads after it,
and every row's positions continue the prefix's (P, P+1, …). When decoding
past a padded row, each row's new token gets its own position id and the pads
stay masked.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch


@cache
def _cache_argument(model_class: type) -> str:
    """The name under which this transformers version passes the KV cache."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _returned_cache(output):
    return getattr(output, "cache", None) or getattr(output, "past_key_values", None)


@dataclass
class Prefix:
    """A context run once: its token ids, KV cache (batch 1) and last-position logits (V,)."""

    ids: list[int]
    cache: object
    last_logits: torch.Tensor

    @property
    def length(self) -> int:
        return len(self.ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def _grouped_kv_on_cpu(model) -> Iterator[None]:
    """On CPU, let SDPA read grouped key/value heads without copying them per query head.

    With an attention mask (the pads here), transformers repeats every
    key/value head H/KV times before SDPA, because CUDA's fast kernels take no
    mask with grouped heads; torch's CPU SDPA takes both (`enable_gqa`). Same
    numbers (0.0 difference on SmolLM2), about 30 % less time per batch of
    suffixes. `TRANSFORMERS_SDPA_FORCE_GQA` is transformers' switch for it, read
    at every call; it is set only around these calls.
    """
    if _device(model).type != "cpu":
        yield
        return
    key = "TRANSFORMERS_SDPA_FORCE_GQA"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[key]
        else:
            os.environ[key] = before


@torch.inference_mode()
def encode_prefix(model, ids: list[int]) -> Prefix:
    """Run `ids` once and keep the cache; only the last position is unembedded."""
    input_ids = torch.tensor([ids], device=_device(model))  # (1, P)
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    return Prefix(list(ids), _returned_cache(out), out.logits[0, -1].float())


def _batch_cache(prefix: Prefix, batch: int):
    """A copy of the prefix's cache repeated `batch` times along the batch dimension."""
    expanded = copy.deepcopy(prefix.cache)
    if batch > 1:
        expanded.batch_repeat_interleave(batch)
    return expanded


@dataclass
class SuffixRun:
    """What `run_suffixes` returns for one batch of continuations.

    logits: (B, S, V) float32 at every suffix position (or those kept);
    lengths: real tokens per row; cache: the batch's cache after the run, for
    decoding on; mask: (B, P + S) attention mask matching that cache.
    """

    logits: torch.Tensor
    lengths: list[int]
    cache: object
    mask: torch.Tensor


@torch.inference_mode()
def run_suffixes(
    model, prefix: Prefix, suffixes: list[list[int]], pad_id: int = 0, logits_to_keep: int = 0
) -> SuffixRun:
    """Run right-padded `suffixes` (B rows) after `prefix`; logits at their positions.

    `logits_to_keep` = k > 0 unembeds only the last k positions (as HF does).
    Hooks registered around this call see tensors of shape (B, S, …).
    """
    if not suffixes or min(len(s) for s in suffixes) == 0:
        raise ValueError("every suffix needs at least one token")
    device = _device(model)
    width = max(len(s) for s in suffixes)
    batch = len(suffixes)
    ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)  # (B, S)
    mask = torch.zeros((batch, prefix.length + width), dtype=torch.long, device=device)
    mask[:, : prefix.length] = 1  # (B, P + S)
    for row, suffix in enumerate(suffixes):
        ids[row, : len(suffix)] = torch.tensor(suffix, device=device)
        mask[row, prefix.length : prefix.length + len(suffix)] = 1
    positions = torch.arange(prefix.length, prefix.length + width, device=device)
    kv = _batch_cache(prefix, batch)
    with _grouped_kv_on_cpu(model):
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions.expand(batch, -1),  # (B, S)
            use_cache=True,
            logits_to_keep=logits_to_keep,
            **{_cache_argument(type(model)): kv},
        )
    return SuffixRun(out.logits.float(), [len(s) for s in suffixes], _returned_cache(out), mask)


def suffix_logprobs(
    prefix: Prefix, run: SuffixRun, suffixes: list[list[int]], first: list[int]
) -> list[list[float]]:
    """Per row, log P of suffix tokens first[r], first[r]+1, … given everything before them.

    Token 0 of a suffix is predicted by the prefix's last position; token j > 0
    by suffix position j - 1. Needs `run` with logits at every position.
    """
    prefix_logp = prefix.last_logits.log_softmax(-1)  # (V,)
    logp = run.logits.log_softmax(-1)  # (B, S, V)
    out = []
    for row, suffix in enumerate(suffixes):
        values = []
        for j in range(first[row], len(suffix)):
            source = prefix_logp if j == 0 else logp[row, j - 1]
            values.append(float(source[suffix[j]]))
        out.append(values)
    return out


@torch.inference_mode()
def greedy(
    model,
    prefix: Prefix,
    queries: list[list[int]],
    max_new_tokens: int,
    pad_id: int = 0,
    stop=None,
) -> list[list[int]]:
    """Greedy tokens after prefix + each query (B rows decoded together).

    `stop(tokens) -> bool` ends a row early (it is still decoded with the batch
    until every row has stopped, then trimmed). Returns the new tokens per row.
    """
    device = _device(model)
    run = run_suffixes(model, prefix, queries, pad_id=pad_id)
    rows = torch.arange(len(queries), device=device)
    last = torch.tensor([n - 1 for n in run.lengths], device=device)
    next_ids = run.logits[rows, last].argmax(-1)  # (B,)
    positions = torch.tensor([prefix.length + n for n in run.lengths], device=device)  # (B,)
    generated = [[int(t)] for t in next_ids]
    return _extend(model, run.cache, run.mask, next_ids, positions, generated, max_new_tokens, stop)


@torch.inference_mode()
def greedy_from(
    model,
    prefix: Prefix,
    run: SuffixRun,
    rows: list[int],
    cut: list[int],
    given: list[list[int]],
    max_new_tokens: int,
    stop=None,
) -> list[list[int]]:
    """Greedy decoding that branches off a finished teacher-forced run, reusing its cache.

    For each i, row `rows[i]` of `run` keeps its suffix tokens before suffix
    position `cut[i]`; its tokens from there on are masked out of the cache,
    as pads are, and `given[i][-1]` takes position `cut[i]` instead. `given[i]`
    is what the caller has decided for the row so far (its last token is the
    one fed next); decoding appends to it until `stop(tokens)` or until it holds
    `max_new_tokens` tokens. Saves running the query again when a forced
    answer shows where the greedy path leaves it. Consumes `run.cache`.
    """
    device = _device(model)
    index = torch.tensor(rows, device=device)
    kv = run.cache
    kv.batch_select_indices(index)  # in place: (b, …) from (B, …)
    mask = run.mask[index].clone()  # (b, P + S)
    for i, c in enumerate(cut):
        mask[i, prefix.length + c :] = 0
    next_ids = torch.tensor([g[-1] for g in given], device=device)  # (b,)
    positions = torch.tensor([prefix.length + c for c in cut], device=device)  # (b,)
    generated = [list(g) for g in given]
    return _extend(model, kv, mask, next_ids, positions, generated, max_new_tokens, stop)


def _extend(model, kv, mask, next_ids, positions, generated, max_new_tokens, stop):
    """Feed `next_ids` (B,) at `positions` (B,) and append greedy tokens to each row.

    A row stops when `stop(row)` holds or it has `max_new_tokens` tokens. Rows
    that have stopped leave the batch once they are half of it (selecting the
    cache's rows costs about one decoding step); until then they are fed along
    and their extra tokens dropped.
    """
    live = [r for r, g in enumerate(generated) if not _stopped(g, max_new_tokens, stop)]
    if len(live) < len(generated):
        kv, mask, next_ids, positions = _select(kv, mask, next_ids, positions, live)
    while live:
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, P + S + t)
        with _grouped_kv_on_cpu(model):
            out = model(
                input_ids=next_ids[:, None],  # (B, 1)
                attention_mask=mask,
                position_ids=positions[:, None],  # (B, 1)
                use_cache=True,
                **{_cache_argument(type(model)): kv},
            )
        kv = _returned_cache(out)
        positions = positions + 1
        next_ids = out.logits[:, -1].argmax(-1)  # (B,)
        keep = []
        for i, (row, token) in enumerate(zip(live, next_ids.tolist(), strict=True)):
            if row is None:
                continue
            generated[row].append(token)
            if _stopped(generated[row], max_new_tokens, stop):
                live[i] = None
            else:
                keep.append(i)
        if not keep:
            break
        if 2 * len(keep) <= len(live):
            kv, mask, next_ids, positions = _select(kv, mask, next_ids, positions, keep)
            live = [live[i] for i in keep]
    return generated


# An empty index for `logits_to_keep`: run the blocks, unembed nothing (the
# caller reads the residual stream through hooks and its own read-out).
_NO_LOGITS = torch.empty(0, dtype=torch.long)


def _cropped(cache, from_length: int, to_length: int):
    """A copy of `cache` holding only its first `to_length` positions."""
    kept = copy.deepcopy(cache)
    if to_length < from_length:
        kept.crop(to_length - from_length)  # a negative count removes that many positions
    return kept


@torch.inference_mode()
def encode_prefixes(model, ids: list[int], lengths: list[int]) -> list[Prefix]:
    """Prefixes ids[:n] for each n in `lengths`, from ONE pass over `ids`.

    The pass's KV cache is cropped to each length, and only the positions
    n − 1 are unembedded. With `lengths` empty the pass keeps no cache (its
    hooks read what they need). Hooks registered around this call see (1, S, …).
    """
    if any(not 0 < n <= len(ids) for n in lengths):
        raise ValueError(f"prefix lengths {lengths} must lie in 1…{len(ids)}")
    device = _device(model)
    input_ids = torch.tensor([ids], device=device)  # (1, S)
    keep = torch.tensor([n - 1 for n in lengths], dtype=torch.long)  # (n,) on the CPU: any device
    out = model(input_ids=input_ids, use_cache=bool(lengths), logits_to_keep=keep)
    if not lengths:
        return []
    cache = _returned_cache(out)
    return [
        Prefix(list(ids[:n]), _cropped(cache, len(ids), n), out.logits[0, i].float())
        for i, n in enumerate(lengths)
    ]


def _tree_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An additive mask (1, 1, N, P + N) from a boolean one: 0 where allowed, else the minimum."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def _sliding_window(model) -> int | None:
    """The window of the model's sliding-window layers, if it has any."""
    config = model.config
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return config.sliding_window
    return None


@torch.inference_mode()
def run_tree(
    model,
    prefix: Prefix,
    tokens: list[int],
    parents: list[int],
    context: list[int] | None = None,
    logits: bool = False,
) -> torch.Tensor | None:
    """Run a forest of continuations of `prefix` in ONE pass over its cache.

    Node i is token `tokens[i]` following node `parents[i]` (−1: a root, which
    follows the first `context[i]` positions of the prefix, all by default);
    parents come before their children, and a child follows its root's
    context. Each node sits at the position it has in its own sequence and
    attends to its context and its ancestors only (a custom 4D attention mask,
    honoured by every supported architecture; sliding-window layers get their
    window applied too), so its outputs equal a plain pass over its context
    and path. The lens scores the candidates' tries after several examples of
    one replicate this way: one pass, one token per node. Hooks registered
    around this call see (1, N, …). Returns the logits (N, V) when asked.
    """
    n, p_len = len(tokens), prefix.length
    context = [p_len] * n if context is None else context
    if not tokens or len(parents) != n or len(context) != n:
        raise ValueError(
            f"need one parent and context per token: {n}, {len(parents)}, {len(context)}"
        )
    if any(not -1 <= p < i for i, p in enumerate(parents)):
        raise ValueError(f"parents {parents} must come before their children")
    if any(not 0 < c <= p_len for c in context):
        raise ValueError(f"contexts {sorted(set(context))} must lie in 1…{p_len}")
    device = _device(model)
    sees, depth = [], []
    allowed = torch.zeros((n, p_len + n), dtype=torch.bool, device=device)  # (N, P + N)
    for i, parent in enumerate(parents):
        if parent < 0:
            sees.append(context[i])
            depth.append(1)
            allowed[i, : context[i]] = True
        else:
            sees.append(sees[parent])
            depth.append(depth[parent] + 1)
            allowed[i] = allowed[parent]
        allowed[i, p_len + i] = True
    positions = torch.tensor(
        [c + d - 1 for c, d in zip(sees, depth, strict=True)], device=device
    )  # (N,)
    dtype = next(model.parameters()).dtype
    mask = _tree_mask(allowed, dtype)
    window = _sliding_window(model)
    if window is not None:
        if p_len >= window:
            raise ValueError(
                f"the context ({p_len} tokens) reaches the model's sliding window ({window}): "
                "its cache no longer holds every position; use fewer examples"
            )
        key_positions = torch.cat([torch.arange(p_len, device=device), positions])  # (P + N,)
        near = positions[:, None] - key_positions[None, :] < window  # (N, P + N)
        mask = {"full_attention": mask, "sliding_attention": _tree_mask(allowed & near, dtype)}
    out = model(
        input_ids=torch.tensor([tokens], device=device),  # (1, N)
        attention_mask=mask,
        position_ids=positions[None],  # (1, N)
        use_cache=True,
        logits_to_keep=0 if logits else _NO_LOGITS,
        **{_cache_argument(type(model)): copy.deepcopy(prefix.cache)},
    )
    return out.logits[0].float() if logits else None


def _stopped(tokens: list[int], max_new_tokens: int, stop) -> bool:
    return len(tokens) >= max_new_tokens or bool(stop and stop(tokens))


def _select(kv, mask, next_ids, positions, keep: list[int]):
    """The decoding state of rows `keep` only (the cache is selected in place)."""
    index = torch.tensor(keep, device=mask.device)
    kv.batch_select_indices(index)
    return kv, mask[index], next_ids[index], positions[index]
