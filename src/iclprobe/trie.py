"""The token trie of candidate answers: which positions need a read-out, and what to sum.

Each candidate integer is a token sequence from the scoring boundary (lead
space, digits, terminator). Candidates share prefixes (SmolLM2 writes every
positive answer as "␠", digits, "),"), so their probabilities share factors:
P(c) = Π over the edges of c's path of P(next token | the node before it).
Normalising each node's distribution over its children (the tokens that
continue some candidate there) makes the per-layer distribution over
candidates proper: the probabilities of all leaves sum to one.

Only a node with two or more children needs a read-out (with one child the
normalised probability is 1), and only it and its ancestors need to be run.
This module finds those nodes, parents before children, and how each
candidate's log-probability sums their log-probabilities; it knows nothing
of models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Path = tuple[int, ...]


class CandidateTokensError(ValueError):
    """The candidates' token sequences do not form a proper trie (one a prefix of another)."""


@dataclass
class Nodes:
    """The nodes that must be run, parents before children (sorted by depth, then path).

    Node r is the path `paths[r]`: token `tokens[r]` after node `parents[r]`
    (−1: after the context itself). `read[r]` says whether it has two or
    more children and so needs a read-out.
    """

    paths: list[Path] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    read: list[bool] = field(default_factory=list)


@dataclass
class CandidateTrie:
    """Candidates' paths, the nodes to run and read out, and each candidate's edges.

    `columns` are the distinct tokens on the trie's edges; read-outs are
    restricted to them. `branching` lists the nodes with two or more children
    in read-out order: the root first when it branches, then those of `run`.
    `children[n]` are the columns of branching node n's children; `edges[c]`
    the (branching node, column) pairs along candidate c's path, whose
    log-probabilities sum to the candidate's.
    """

    candidates: list[int]
    paths: list[Path]
    columns: list[int]
    run: Nodes
    root_branches: bool
    branching: list[Path]
    children: list[list[int]]
    edges: list[list[tuple[int, int]]]

    @property
    def max_edges(self) -> int:
        return max((len(e) for e in self.edges), default=0)


def _check_prefix_free(candidates: list[int], paths: list[Path]) -> None:
    owner: dict[Path, int] = {}
    for candidate, path in zip(candidates, paths, strict=True):
        if not path:
            raise CandidateTokensError(f"candidate {candidate} has no tokens")
        if path in owner:
            raise CandidateTokensError(
                f"candidates {owner[path]} and {candidate} have the same tokens {list(path)}"
            )
        owner[path] = candidate
    for candidate, path in zip(candidates, paths, strict=True):
        for depth in range(1, len(path)):
            other = owner.get(path[:depth])
            if other is not None:
                raise CandidateTokensError(
                    f"candidate {other}'s tokens {list(path[:depth])} are a prefix of candidate "
                    f"{candidate}'s {list(path)}: the terminator does not end the answer, so the "
                    "candidates' probabilities would not sum to one"
                )


def build_trie(candidates: list[int], paths: list[list[int]]) -> CandidateTrie:
    """The trie of `paths[i]`, the token ids of `candidates[i]` from the scoring boundary."""
    paths = [tuple(p) for p in paths]
    _check_prefix_free(candidates, paths)
    kids: dict[Path, list[int]] = {}
    for path in paths:
        for depth in range(len(path)):
            siblings = kids.setdefault(path[:depth], [])
            if path[depth] not in siblings:
                siblings.append(path[depth])
    branching_set = {node for node, tokens in kids.items() if len(tokens) > 1}
    # A node is run when it branches or is an ancestor of one that does (the root,
    # the context itself, is never run: its read-out is the context's last position).
    to_run = {node[:depth] for node in branching_set for depth in range(1, len(node) + 1)}
    run, row_of = Nodes(), {(): -1}
    for node in sorted(to_run, key=lambda n: (len(n), n)):
        row_of[node] = len(run.paths)
        run.paths.append(node)
        run.parents.append(row_of[node[:-1]])
        run.tokens.append(node[-1])
        run.read.append(node in branching_set)
    root_branches = () in branching_set
    branching = ([()] if root_branches else []) + [
        path for path, read in zip(run.paths, run.read, strict=True) if read
    ]
    columns = sorted({t for p in paths for t in p})
    column = {t: i for i, t in enumerate(columns)}
    children = [[column[t] for t in kids[node]] for node in branching]
    index = {node: n for n, node in enumerate(branching)}
    edges = [[(index[p[:d]], column[p[d]]) for d in range(len(p)) if p[:d] in index] for p in paths]
    return CandidateTrie(
        candidates=list(candidates),
        paths=paths,
        columns=columns,
        run=run,
        root_branches=root_branches,
        branching=branching,
        children=children,
        edges=edges,
    )
