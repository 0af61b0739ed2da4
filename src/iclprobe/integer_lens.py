"""The logit lens's distribution over candidate integers, per layer.

For one context (the replicate's tokens before an example's scoring boundary)
each candidate integer's tokens (lead space, digits, terminator;
`tokens.encode_answer`) are teacher-forced from the boundary, and layer ℓ's
read-out is applied at each of its positions. At every position the read-out
is normalised over the tokens that can continue some candidate there (the
children of that node in the candidates' token trie, `iclprobe.trie`), and
a candidate's log-probability is the sum along its path. The result is a
proper distribution over the candidates at every layer, and at layer L it is
the model's own distribution over the candidates, normalised the same way.

Cost: the context's KV cache is shared by all candidates, and only the trie's
nodes with two or more children (and their ancestors) are run, one token per
node, in one pass whose attention mask lets each node see its context and its
own ancestors only (`prefix.run_tree`), for all examples of a replicate at
once over the cache of the replicate's pass; a leaf's probability comes from
its parent's read-out. For SmolLM2 and 0…412 that is 42 tokens per example,
not 413 passes of 5.
"""

from __future__ import annotations

import torch

from iclprobe.anatomy import Anatomy
from iclprobe.config import Task
from iclprobe.hooks import capture_residual
from iclprobe.prefix import Prefix, run_tree
from iclprobe.readout import readout
from iclprobe.tokens import TokenizationError, encode_answer
from iclprobe.trie import CandidateTrie, build_trie


def candidate_paths(tokenizer, task: Task, candidates: list[int]) -> list[list[int]]:
    """Each candidate's token ids from the scoring boundary, after a query alone.

    Tokenized once per task, after the query of the smallest x: tokenizing 400
    candidates behind every example's whole context would cost seconds, and a
    clean token boundary (checked by the forward stage) makes the answer's
    tokens independent of what precedes it; `check_paths` confirms this on
    every example's true answer.
    """
    query = task.query_text(task.x_low)
    return [encode_answer(tokenizer, query, task, c).answer_ids for c in candidates]


def check_paths(
    tokenizer, task: Task, candidates: list[int], paths: list[list[int]], y: int, in_replicate
) -> None:
    """Refuse candidate tokens unlike those of the true answer `y` in the replicate itself."""
    alone = (
        paths[candidates.index(y)] if y in candidates else candidate_paths(tokenizer, task, [y])[0]
    )
    if alone != in_replicate:
        raise TokenizationError(
            f"task {task.name!r}: answer {y} tokenizes as {alone} after a query alone but as "
            f"{in_replicate} in the replicate; the candidates' tokens depend on the context, "
            "which the integer lens does not support"
        )


def _edge_index(trie: CandidateTrie) -> torch.Tensor:
    """(C, E) indices into the flattened (node, column) log-probs; padding points at a zero."""
    width = len(trie.columns)
    pad = len(trie.branching) * width
    index = torch.full((len(trie.candidates), max(trie.max_edges, 1)), pad, dtype=torch.long)
    for c, edges in enumerate(trie.edges):
        for e, (node, column) in enumerate(edges):
            index[c, e] = node * width + column
    return index


def children_mask(trie: CandidateTrie) -> torch.Tensor:
    """(N, K) True where column k is a child of branching node n."""
    mask = torch.zeros((len(trie.branching), len(trie.columns)), dtype=torch.bool)
    for node, columns in enumerate(trie.children):
        mask[node, columns] = True
    return mask


@torch.inference_mode()
def branching_residuals(
    model,
    anatomy: Anatomy,
    prefix: Prefix,
    trie: CandidateTrie,
    contexts: list[int],
    roots: torch.Tensor | None,
) -> tuple[list[torch.Tensor], int]:
    """Per context, the residual stream (L+1, N, d) at each branching node, in `trie.branching` order.

    `contexts` are lengths of contexts that are all prefixes of `prefix` (the
    examples of one replicate): the trie is run after each of them in ONE
    pass (`prefix.run_tree`). `roots` (L+1, E, d) is the stream at each
    context's last position (the scoring boundary's predictor), captured by
    the caller's pass over the replicate; it is needed when the root branches
    (e.g. "␣" and "␣-" for answers of both signs). Returns the stacks and the
    number of tokens run.
    """
    nodes, n_ctx = trie.run, len(contexts)
    runs = []
    if nodes.tokens:
        n = len(nodes.tokens)
        parents = [p if p < 0 else p + e * n for e in range(n_ctx) for p in nodes.parents]
        read = torch.tensor(nodes.read * n_ctx, device=prefix.last_logits.device)  # (E*n,)
        with capture_residual(anatomy, select=lambda t: t[0, read.to(t.device)]) as resid:
            run_tree(
                model,
                prefix,
                nodes.tokens * n_ctx,
                parents,
                context=[c for c in contexts for _ in range(n)],
            )
        stack = torch.stack([resid[layer] for layer in range(anatomy.n_layers + 1)])
        runs = list(stack.chunk(n_ctx, dim=1))  # E × (L+1, n read, d)
    out = []
    for e in range(n_ctx):
        parts = []
        if trie.root_branches:
            if roots is None:
                raise ValueError("the candidates' root branches: its residual stream is needed")
            parts.append(roots[:, e, None])  # (L+1, 1, d)
        if runs:
            parts.append(runs[e])
        out.append(torch.cat(parts, dim=1))
    return out, len(nodes.tokens) * n_ctx


@torch.inference_mode()
def candidate_logprobs(anatomy: Anatomy, trie: CandidateTrie, resid: torch.Tensor) -> torch.Tensor:
    """(L+1, C) log-probabilities of the candidates from the branching nodes' stream (L+1, N, d).

    Each node's read-out is restricted to the trie's tokens and normalised over
    its children; a candidate sums its path's edges (a single-child edge adds
    log 1 = 0 and is not stored).
    """
    device = resid.device
    columns = torch.tensor(trie.columns, device=device)  # (K,)
    logits = readout(anatomy, resid, rows=columns).float()  # (L+1, N, K)
    mask = children_mask(trie).to(device)  # (N, K)
    logp = logits.masked_fill(~mask, float("-inf")).log_softmax(-1)  # (L+1, N, K)
    flat = logp.masked_fill(~mask, 0.0).flatten(1)  # (L+1, N*K)
    flat = torch.cat([flat, flat.new_zeros(flat.shape[0], 1)], dim=1)  # a zero for padding
    return flat[:, _edge_index(trie).to(device)].sum(-1)  # (L+1, C)


@torch.inference_mode()
def integer_distributions(
    model,
    anatomy: Anatomy,
    prefix: Prefix,
    paths: list[list[int]],
    candidates: list[int],
    contexts: list[int],
    roots: torch.Tensor | None,
) -> tuple[list[torch.Tensor], int]:
    """Per context length in `contexts`, (L+1, C) log-probabilities of `candidates`; tokens run."""
    trie = build_trie(candidates, paths)
    if not trie.branching:
        raise ValueError(f"candidates {candidates[:3]}… share one token path: nothing to compare")
    resids, n_tokens = branching_residuals(model, anatomy, prefix, trie, contexts, roots)
    return [candidate_logprobs(anatomy, trie, resid) for resid in resids], n_tokens
