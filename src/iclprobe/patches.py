"""The runs behind activation patching: source states, patched targets, answers read off them.

`iclprobe.patching` defines the stage (what is patched, what is recorded);
this module runs it. Per replicate:

1. `source_states`: every source prompt (a shared context, one query each)
   as a branch of one token tree; the residual stream at every layer at each
   branch's decision position is captured, and the source's own P(f(x_s)).
2. `patch_replicate`: every target prompt (a shared context, one query each)
   as a branch of another tree. After each query's tokens before its decision
   position d come L + 2 copies of the token at d: copy ℓ ≤ L has its
   residual stream at layer ℓ replaced by the source's (one hook per layer,
   touching only its copies), copy L + 1 is left clean. Everything after d
   grows from those copies without hooks: the patch lives in their keys and
   values. Tokens before d are shared by every copy and run once.
3. The unpatched target's greedy answer (the target's default), then per pair
   a fork of the tree holding the candidates' remaining tokens after every
   copy (a trie, so that candidates sharing a first digit share its node),
   which gives every candidate's teacher-forced log-probability at every layer
   and most greedy answers; layers whose greedy answer leaves every candidate
   are decoded on, all pairs together.

Prompts share the tokens before their decision positions where they can (a
BOS, a target context of examples): those run once, as the tree's prefix.
Zero-shot prompts of a template that starts with {x}, under a tokenizer
without BOS, share nothing: the prefix is empty and each prompt is a chain
of its own from position 0. Pairs run in groups whose patched pass holds at
most `bounds.MAX_TREE_TOKENS` new tokens, one tree per group.

A candidate whose tokens leave the target's path at or before d (SmolLM2
writes "␠-" for the space before a negative number, replacing the "␠" at d)
never passes the patched position: it is scored once, unpatched, and that
value stands for every layer. Likewise, when the unpatched greedy answer
leaves the path before d, it is every layer's greedy answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch

from iclprobe.anatomy import Anatomy
from iclprobe.bounds import MAX_TREE_TOKENS
from iclprobe.config import Task
from iclprobe.hooks import capture_residual, edit_residual
from iclprobe.tokens import AnswerTokens, TokenizationError, encode_answer
from iclprobe.tree import ROOT, TokenTree


def _number_ended(text: str) -> bool:
    """True once a continuation holds more than whitespace, a sign and digits."""
    return re.fullmatch(r"\s*-?\d*", text) is None


def shared_length(answers: list[AnswerTokens]) -> int:
    """Tokens all paths share that come before every decision position and boundary.

    May be 0: zero-shot prompts of a template that starts with {x}, under a
    tokenizer that adds no BOS, begin with different digits; their tree then
    has an empty prefix and each prompt is a chain of its own from position 0.
    """
    first = answers[0].ids
    n = min(min(a.decision, a.boundary) for a in answers)
    for a in answers[1:]:
        n = next((i for i in range(n) if a.ids[i] != first[i]), n)
    return n


def chunks(sizes: list[int], limit: int = MAX_TREE_TOKENS) -> list[list[int]]:
    """Consecutive groups of item indices whose sizes (tree tokens) sum to at most `limit`.

    An item larger than `limit` alone makes a group of its own. Each group is
    run as one tree, so a tree pass holds at most `limit` new tokens however
    many pairs a replicate has (`iclprobe.bounds.TREE_TOKENS`).
    """
    groups: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if not groups or total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += size
    return groups


@dataclass
class _Branches:
    """Token chains added to a tree in one call: ids[start:stop] of each path, from ROOT."""

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)

    def chain(self, tree: TokenTree, ids: list[int], start: int, stop: int, parent=ROOT):
        """Queue ids[start:stop] after `parent`; returns {index in ids: node}."""
        nodes = {}
        for i in range(start, stop):
            nodes[i] = tree.size + len(self.tokens)
            self.tokens.append(ids[i])
            self.parents.append(parent)
            parent = nodes[i]
        return nodes

    def node(self, tree: TokenTree, token: int, parent: int) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        return tree.size + len(self.tokens) - 1


def _logprob(logits: torch.Tensor, token: int) -> float:
    return float(logits.log_softmax(-1)[token])


# ------------------------------------------------------------------------ patch hooks


def _replace(slots: torch.Tensor, values: torch.Tensor):
    """An edit that writes values (n, d) into the residual stream at `slots` (n,) only."""

    def edit(resid: torch.Tensor) -> torch.Tensor:  # (1, S, d)
        out = resid.clone()
        out[0, slots] = values.to(out.device, out.dtype)  # the block's device (a split model)
        return out

    return edit


@contextmanager
def patched(anatomy: Anatomy, patches: list[tuple[int, int, torch.Tensor]]) -> Iterator[None]:
    """Replace the residual stream at (slot, layer) by a vector (d,), for each patch given.

    Slots index the new tokens of the one tree `add` run inside. One hook per
    layer present, each touching only its own slots.
    """
    with ExitStack() as stack:
        for layer in sorted({layer for _, layer, _ in patches}):
            mine = [(slot, value) for slot, at, value in patches if at == layer]
            slots = torch.tensor([slot for slot, _ in mine])  # (n,)
            values = torch.stack([value for _, value in mine])  # (n, d)
            stack.enter_context(edit_residual(anatomy, layer, _replace(slots, values)))
        yield


# ------------------------------------------------------------------------ source side


@dataclass
class SourceState:
    """One source prompt: its residual stream at its decision position, and its own answer."""

    x: int
    y: int
    resid: torch.Tensor  # (L + 1, d) float32
    logprob: float  # log P(f(x)) under the source prompt


@torch.inference_mode()
def source_states(
    model,
    anatomy: Anatomy,
    tokenizer,
    task: Task,
    context: str,
    xs: list[int],
    max_tree_tokens: int = MAX_TREE_TOKENS,
) -> list[SourceState]:
    """Every x's residual stream at every layer at its decision position, from one tree
    per group of at most `max_tree_tokens` new tokens."""
    fn = task.fn
    answers = [encode_answer(tokenizer, context + task.query_text(x), task, fn(x)) for x in xs]
    shared = shared_length(answers)
    sizes = [a.span[-1] - shared for a in answers]
    states = []
    for group in chunks(sizes, max_tree_tokens):
        group_xs = [xs[i] for i in group]
        states += _source_group(model, anatomy, fn, group_xs, [answers[i] for i in group])
    return states


def _source_group(model, anatomy: Anatomy, fn, xs, answers) -> list[SourceState]:
    shared = shared_length(answers)
    tree = TokenTree(model, answers[0].ids[:shared])
    queue, chains = _Branches(), []
    for a in answers:
        # Through the second-to-last scored token: the last one's own logits are never needed.
        chains.append(queue.chain(tree, a.ids, shared, a.span[-1]))
    slots = torch.tensor([chain[a.decision] for a, chain in zip(answers, chains, strict=True)])
    layers = list(range(anatomy.n_layers + 1))
    with capture_residual(anatomy, select=lambda t: t[0, slots].float(), layers=layers) as store:
        tree.add(queue.tokens, queue.parents)  # slots are node indices: the tree starts empty
    resid = torch.stack([store[layer] for layer in layers], dim=1)  # (len(xs), L + 1, d)
    states = []
    for k, (x, a, chain) in enumerate(zip(xs, answers, chains, strict=True)):
        total = sum(_logprob(tree.logits(chain.get(i - 1, ROOT)), a.ids[i]) for i in a.span)
        states.append(SourceState(x, fn(x), resid[k], total))
    return states


# ------------------------------------------------------------------------ target side


@dataclass(frozen=True)
class TargetPath:
    """A target prompt followed by y = f(x): the path whose decision position is patched."""

    context: str  # the target's examples, then the task's query for x, to the boundary
    x: int
    y: int
    answer: AnswerTokens


def target_path(tokenizer, task: Task, examples: str, x: int) -> TargetPath:
    context = examples + task.query_text(x)
    y = task.fn(x)
    return TargetPath(context, x, y, encode_answer(tokenizer, context, task, y))


@dataclass
class PairResult:
    """One (x_source, x_target) pair: per layer 0…L, and the unpatched target."""

    greedy_texts: list[str]  # (L + 1) greedy continuations from the scoring boundary
    clean_greedy_text: str
    y_default: int | None  # the unpatched target's greedy answer, if it reads as one
    logprobs: dict[int, list[float]]  # candidate y -> (L + 1) log P(y)
    clean_logprobs: dict[int, float]  # candidate y -> unpatched log P(y)
    on_path: dict[int, bool]  # candidate y -> its tokens pass through the patched position
    # The greedy token right after the patched position, per layer (None where the
    # greedy answer leaves the path before it), and each on-path candidate's token there.
    first_tokens: list[int | None]
    candidate_first: dict[int, int]


@dataclass
class _Target:
    """One pair's nodes in the target tree: ids[shared:d] as a chain, then L + 2 copies of ids[d]."""

    path: TargetPath
    source: SourceState
    shared: int  # path tokens in the tree's prefix
    chain: dict[int, int]  # path index i (shared ≤ i < d) -> node
    copies: list[int]  # nodes of the token at d: patched at layers 0…L, then clean

    @property
    def ids(self) -> list[int]:
        return self.path.answer.ids

    @property
    def d(self) -> int:
        return self.path.answer.decision

    @property
    def b(self) -> int:
        return self.path.answer.boundary

    def node_before(self, i: int) -> int:
        """The node whose logits predict path token i ≤ d (unpatched in every copy)."""
        return self.chain.get(i - 1, ROOT)


@dataclass
class _Scored:
    """One pair's candidates, scored in a fork of the tree, and the greedy answers found there."""

    logprobs: dict[int, list[float]]  # y -> per copy (layers 0…L, then clean)
    on_path: dict[int, bool]
    first: dict[int, int]  # y on the path -> its token right after d
    greedy: dict[int, list[int]]  # layer -> tokens after d, up to the end of the answer
    open: dict[int, list[int]]  # layer -> tokens after d so far, the last one off every candidate


def _score(tree: TokenTree, t: _Target, task: Task, tokenizer, ys, budget: int) -> _Scored:
    """Every candidate after every copy, teacher-forced in one fork; greedy answers read off it."""
    ids, d, shared = t.ids, t.d, t.shared
    fork, queue = tree.fork(), _Branches()
    tries: dict[tuple[int, tuple[int, ...]], int] = {}  # (copy, tokens after d) -> node
    on_path, afters, off = {}, {}, {}
    for y in ys:
        answer = encode_answer(tokenizer, t.path.context, task, y)
        if answer.ids[:shared] != ids[:shared]:
            raise TokenizationError(
                f"task {task.name!r}: {t.path.context[-30:]!r} tokenizes differently before "
                f"the answer {y} than before {t.path.y}; the two cannot share a patch"
            )
        split = next(
            (i for i, (a, c) in enumerate(zip(answer.ids, ids, strict=False)) if a != c), len(ids)
        )
        on_path[y] = split > d
        end = answer.span[-1] + 1
        if on_path[y]:
            afters[y] = after = answer.ids[d + 1 : end]
            for copy, node in enumerate(t.copies):
                for j in range(1, len(after)):  # the last token's own logits are never needed
                    key = (copy, tuple(after[:j]))
                    if key not in tries:
                        tries[key] = queue.node(fork, after[j - 1], node)
                    node = tries[key]
        else:  # scored once, unpatched, from where it leaves the path
            off[y] = (answer, queue.chain(fork, answer.ids, split, end - 1, t.node_before(split)))
    if queue.tokens:
        fork.add(queue.tokens, queue.parents)
    lead = sum(_logprob(tree.logits(t.node_before(i)), ids[i]) for i in range(t.b, d + 1))
    logprobs = {}
    for y, after in afters.items():
        logprobs[y] = [
            lead
            + sum(
                _logprob(fork.logits(copy if j == 0 else tries[(k, tuple(after[:j]))]), after[j])
                for j in range(len(after))
            )
            for k, copy in enumerate(t.copies)
        ]
    for y, (answer, nodes) in off.items():
        total = 0.0
        for i in answer.span:
            prior = nodes.get(i - 1, t.node_before(i))
            total += _logprob(fork.logits(prior), answer.ids[i])
        logprobs[y] = [total] * len(t.copies)
    ended = _ends(tokenizer, ids[t.b : d + 1])
    greedy, stuck = {}, {}
    for layer, copy in enumerate(t.copies[:-1]):
        tokens = [int(fork.logits(copy).argmax())]
        while not ended(tokens) and len(tokens) < budget and (layer, tuple(tokens)) in tries:
            tokens.append(int(fork.logits(tries[(layer, tuple(tokens))]).argmax()))
        done = ended(tokens) or len(tokens) >= budget
        (greedy if done else stuck)[layer] = tokens
    first = {y: after[0] for y, after in afters.items()}
    return _Scored(logprobs, on_path, first, greedy, stuck)


def answer_budget(task: Task, ys: list[int]) -> int:
    """Tokens after d a greedy answer may take: sign, digits, terminator, a token each at most.

    The longest candidate is at one end of the sorted candidates (a lazy range
    for an answer_range, never walked).
    """
    candidates = task.candidates()
    return max(len(str(y)) for y in (candidates[0], candidates[-1], *ys)) + 2


def _ends(tokenizer, lead: list[int]):
    """The greedy stop rule: the text from the boundary holds more than a number."""
    return lambda tokens: _number_ended(tokenizer.decode(lead + tokens))


def _greedy_through_patch(tree, targets, tokenizer, budget) -> list[tuple[list[int], bool]]:
    """The unpatched targets' greedy answers: (tokens from the boundary, through d?).

    Tokens b…d are chosen before d: if a choice leaves the path there, the
    answer never passes the patched position and no patch can change it.
    """
    starts, heads, through = [], [], []
    for t in targets:
        leave = next(
            (
                i
                for i in range(t.b, t.d + 1)
                if int(tree.logits(t.node_before(i)).argmax()) != t.ids[i]
            ),
            None,
        )
        through.append(leave is None)
        starts.append(t.copies[-1] if leave is None else t.node_before(leave))
        heads.append(t.ids[t.b : t.d + 1] if leave is None else t.ids[t.b : leave])
    decoded = tree.greedy(
        starts, budget, stop=lambda k, tokens: _number_ended(tokenizer.decode(heads[k] + tokens))
    )
    return [(h + g, p) for h, g, p in zip(heads, decoded, through, strict=True)]


@torch.inference_mode()
def patch_replicate(
    model,
    anatomy: Anatomy,
    tokenizer,
    task: Task,
    paths: list[TargetPath],
    sources: list[SourceState],
    max_tree_tokens: int = MAX_TREE_TOKENS,
) -> list[PairResult]:
    """Patch each source into its target path at every layer 0…L (see the module docstring).

    Pairs run in groups whose patched pass holds at most `max_tree_tokens` new
    tokens (each pair: its path from the shared prefix to d, and L + 2 copies).
    """
    n = anatomy.n_layers + 1
    shared = shared_length([p.answer for p in paths])
    sizes = [p.answer.decision - shared + n + 1 for p in paths]
    budget = answer_budget(task, [s.y for s in sources])
    results = []
    for group in chunks(sizes, max_tree_tokens):
        group_paths, group_sources = [paths[i] for i in group], [sources[i] for i in group]
        results += _patch_group(model, anatomy, tokenizer, task, group_paths, group_sources, budget)
    return results


def _patch_group(model, anatomy: Anatomy, tokenizer, task: Task, paths, sources, budget):
    n = anatomy.n_layers + 1
    shared = shared_length([p.answer for p in paths])
    tree = TokenTree(model, paths[0].answer.ids[:shared])
    queue, patches, targets = _Branches(), [], []
    for path, source in zip(paths, sources, strict=True):
        d = path.answer.decision
        chain = queue.chain(tree, path.answer.ids, shared, d)
        copies = [
            queue.node(tree, path.answer.ids[d], chain.get(d - 1, ROOT)) for _ in range(n + 1)
        ]
        patches += [(copies[layer], layer, source.resid[layer]) for layer in range(n)]
        targets.append(_Target(path, source, shared, chain, copies))
    with patched(anatomy, patches):  # slots are node indices: the tree starts empty
        tree.add(queue.tokens, queue.parents)
    defaults = _greedy_through_patch(tree, targets, tokenizer, budget)
    scored = []
    for t, (tokens, through) in zip(targets, defaults, strict=True):
        y_default = parse_answer(tokenizer.decode(tokens), task)
        ys = list(dict.fromkeys(y for y in (t.path.y, t.source.y, y_default) if y is not None))
        s = _score(tree, t, task, tokenizer, ys, budget)
        if not through:  # every layer answers what the unpatched target answers
            s.greedy, s.open = {layer: None for layer in range(n)}, {}
        scored.append(s)
    _decode_stuck(tree, targets, scored, tokenizer, budget)
    results = []
    for t, s, (tokens, _) in zip(targets, scored, defaults, strict=True):
        clean_text = tokenizer.decode(tokens)
        lead = t.ids[t.b : t.d + 1]
        texts = [
            clean_text if s.greedy[layer] is None else tokenizer.decode(lead + s.greedy[layer])
            for layer in range(n)
        ]
        results.append(
            PairResult(
                greedy_texts=texts,
                clean_greedy_text=clean_text,
                y_default=parse_answer(clean_text, task),
                logprobs={y: values[:n] for y, values in s.logprobs.items()},
                clean_logprobs={y: values[n] for y, values in s.logprobs.items()},
                on_path=s.on_path,
                first_tokens=[None if g is None else g[0] for g in map(s.greedy.get, range(n))],
                candidate_first=s.first,
            )
        )
    return results


def _decode_stuck(tree, targets, scored, tokenizer, budget) -> None:
    """Decode on the layers whose greedy answer left every candidate, all pairs together."""
    stuck = [(t, s, layer) for t, s in zip(targets, scored, strict=True) for layer in s.open]
    if not stuck:
        return
    queue, starts, heads = _Branches(), [], []
    for t, s, layer in stuck:
        tokens = s.open[layer]
        # The chosen tokens but the last become nodes after the copy; decoding starts there.
        nodes = queue.chain(tree, tokens, 0, len(tokens) - 1, t.copies[layer])
        starts.append(nodes.get(len(tokens) - 2, t.copies[layer]))
        heads.append(t.ids[t.b : t.d + 1] + tokens[:-1])
    if queue.tokens:
        tree.add(queue.tokens, queue.parents)
    steps = budget - min(len(s.open[layer]) for _, s, layer in stuck) + 1
    decoded = tree.greedy(
        starts, steps, stop=lambda k, tokens: _number_ended(tokenizer.decode(heads[k] + tokens))
    )
    for (_, s, layer), tokens in zip(stuck, decoded, strict=True):
        s.greedy[layer] = (s.open[layer][:-1] + tokens)[:budget]


def answer_pattern(task: Task) -> str:
    """A regex for a continuation that answers an integer: lead, the integer, the terminator."""
    return r"^\s*(-?\d+)" + re.escape(task.terminator)


def parse_answer(text: str, task: Task) -> int | None:
    """The integer a greedy continuation answers, or None if it does not read as one."""
    match = re.match(answer_pattern(task), text)
    return None if match is None else int(match.group(1))
