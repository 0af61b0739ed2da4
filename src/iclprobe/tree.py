"""Many short continuations of one cached prefix, run together along a single row.

`iclprobe.prefix.run_suffixes` runs B continuations as B rows, and so copies
the prefix's KV cache B times; when the continuations are a few tokens each
(activation patching runs about a hundred per prompt pair, one per layer and
candidate answer), copying those caches costs more on a CPU than the
arithmetic. A `TokenTree` lays every continuation out along one row instead,
as a tree of tokens over the prefix:

- each node is one token with a parent: `ROOT` (the prefix) or an earlier node;
- a node attends to the prefix and to its own ancestors only (a 4D attention
  mask) and sits at position P + depth, so its logits equal those of a plain
  pass over the prefix and the path to it (tests/test_tree.py checks this on
  every supported architecture);
- shared beginnings are computed once, no cache is copied, and `add` runs
  only the new nodes over the cache of all earlier ones;
- the tree keeps every node's logits (V floats each) for `logits` and
  `greedy`, which decodes from many nodes at once, one `add` per step.

Hooks registered around `add` see tensors of shape (1, n, …): slot i holds the
i-th new node, in the order given.

The tree keeps every node's keys and values, including in layers that attend
within a sliding window; this is exact while every path (P + depth) fits in the
window, which `add` checks.

`iclprobe.prefix.run_tree` runs one such forest in a single pass over a
prefix's cache and keeps nothing; a `TokenTree` keeps growing (its cache, its
nodes' logits), which patching needs: one patched pass, then decoding steps
and per-pair forks that continue from the patched nodes without running them
again. Both build their masks with `prefix._tree_mask`.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache

from iclprobe.prefix import _cache_argument, _returned_cache, _sliding_window, _tree_mask

ROOT = -1


class TokenTree:
    """A prefix run once and a growing tree of single-token nodes after it.

    `logits(node)` (V,) predict the token after a node (after the prefix for
    ROOT); `add` returns the new nodes' logits (n, V) as well.
    """

    def __init__(self, model, ids: list[int]):
        """Run the prefix `ids`; it may be empty (prompts that share no first token), and
        then nodes whose parent is ROOT start their own sequences at position 0."""
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.prefix_length = len(ids)
        self.window = _sliding_window(model)
        self._check_depth(self.prefix_length)
        # A cache built without the config keeps every position in every layer (see above).
        self.cache = DynamicCache()
        self.prefix_logits = None  # nothing predicts the first token of an empty prefix
        if ids:
            with torch.inference_mode():
                out = model(
                    input_ids=torch.tensor([ids], device=self.device),  # (1, P)
                    use_cache=True,
                    logits_to_keep=1,
                    **{_cache_argument(type(model)): self.cache},
                )
            self.cache = _returned_cache(out)
            self.prefix_logits = out.logits[0, -1].float()  # (V,)
        self.lines: list[list[int]] = []  # per node: its ancestors' indices and its own
        self._logits: list[torch.Tensor] = []  # per node: (V,)

    @property
    def size(self) -> int:
        return len(self.lines)

    def logits(self, node: int) -> torch.Tensor:
        """Logits (V,) predicting the token after `node` (ROOT: after the prefix)."""
        if node != ROOT:
            return self._logits[node]
        if self.prefix_logits is None:
            raise ValueError("the tree's prefix is empty: nothing predicts a first token")
        return self.prefix_logits

    def depth(self, node: int) -> int:
        """Tokens from the prefix to `node`, itself included (ROOT: 0)."""
        return 0 if node == ROOT else len(self.lines[node])

    def _check_depth(self, length: int) -> None:
        if self.window is not None and length > self.window:
            raise ValueError(
                f"a path of {length} tokens is longer than the model's sliding window of "
                f"{self.window}; the tree keeps every position, the model would not"
            )

    @torch.inference_mode()
    def add(self, tokens: list[int], parents: list[int]) -> torch.Tensor:
        """Append one node per token (its parent: ROOT or an earlier node); their logits (n, V).

        A parent may be a node added in the same call, as long as it comes first.
        """
        if len(tokens) != len(parents) or not tokens:
            raise ValueError("give one parent per token, and at least one token")
        first = self.size
        for i, parent in enumerate(parents):
            if not ROOT <= parent < first + i:
                raise ValueError(f"node {first + i}: parent {parent} is not an earlier node")
            self.lines.append([*([] if parent == ROOT else self.lines[parent]), first + i])
        n, total = len(tokens), self.size
        depths = [len(line) for line in self.lines[first:]]
        self._check_depth(self.prefix_length + max(depths))
        allowed = torch.zeros((n, total), dtype=torch.bool)  # (n, N): which nodes each sees
        for i, line in enumerate(self.lines[first:]):
            allowed[i, line] = True
        allowed = torch.cat([torch.ones((n, self.prefix_length), dtype=torch.bool), allowed], 1)
        mask = _tree_mask(allowed.to(self.device), self.dtype)  # (1, 1, n, P + N)
        positions = [self.prefix_length + d - 1 for d in depths]
        out = self.model(
            input_ids=torch.tensor([tokens], device=self.device),  # (1, n)
            attention_mask=mask,
            position_ids=torch.tensor([positions], device=self.device),  # (1, n)
            use_cache=True,
            **{_cache_argument(type(self.model)): self.cache},
        )
        self.cache = _returned_cache(out)
        logits = out.logits[0].float()  # (n, V)
        self._logits.extend(logits)
        return logits

    def greedy(self, starts: list[int], max_new_tokens: int, stop=None) -> list[list[int]]:
        """Greedy tokens after each node in `starts`, decoded together (one `add` per step).

        `stop(k, tokens) -> bool` ends branch k early. The decoded tokens stay
        in the tree as nodes (all but each branch's last).
        """
        tokens = [[int(self.logits(node).argmax())] for node in starts]
        current = list(starts)

        def going(k: int) -> bool:
            return len(tokens[k]) < max_new_tokens and not (stop and stop(k, tokens[k]))

        active = [k for k in range(len(starts)) if going(k)]
        while active:
            first = self.size
            logits = self.add([tokens[k][-1] for k in active], [current[k] for k in active])
            for j, k in enumerate(active):
                current[k] = first + j
                tokens[k].append(int(logits[j].argmax()))
            active = [k for k in active if going(k)]
        return tokens

    def fork(self) -> TokenTree:
        """An independent copy: nodes added to it do not grow this tree (one cache copy)."""
        twin = copy.copy(self)
        twin.cache = copy.deepcopy(self.cache)
        twin.lines = list(self.lines)
        twin._logits = list(self._logits)
        return twin
