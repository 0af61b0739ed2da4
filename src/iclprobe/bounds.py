"""How much work a config may ask of each stage: estimated from the config, refused beyond a bound.

Every bound lives here, and `check_bounds` runs when the config is read (the
Snakefile's parse: before any job, and in every dry run). It estimates each
enabled stage's work from the config alone, without a model, a tokenizer or
torch, and refuses what exceeds a bound with a message that names the key, its
value, the estimate and the bound. docs/bounds.md states the bounds for users.

Estimates, per task:
- *tokens* of a text are its UTF-8 bytes: a byte-level BPE or a SentencePiece
  tokenizer with byte fallback never writes more tokens than bytes (SmolLM2
  writes 232–241 tokens for the default config's 292–301-byte prompts,
  estimated at 303–305), plus `SPECIAL_TOKENS` for a BOS or EOS the tokenizer
  adds;
- the longest prompt is the n longest queries plus the n longest answers of the
  task's x range (the examples are drawn without replacement), so no draw is
  longer;
- *trie nodes* of the integer lens are those of a trie of the candidates'
  characters (lead, digits, terminator) that branch, and their ancestors:
  exact for a tokenizer with one token per character, an over-estimate for one
  that writes several digits as one token.
The model's own shape (layers, heads, vocabulary) is not known at this point:
what grows with it is bounded where the model is loaded (patching's token
tree is split into passes of at most `MAX_TREE_TOKENS`, `iclprobe.patches`),
and the prepared model's context window is checked by `iclprobe.preflight`.

No torch, polars or numpy here: the Snakefile imports this module at every parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iclprobe.config import Settings, Task


@dataclass(frozen=True)
class Bound:
    """A limit on one estimated quantity, and why it is there."""

    name: str
    limit: int
    unit: str
    why: str


X_VALUES = Bound(
    "x values per task",
    10_000,
    "x values",
    "f(x) is evaluated at every x of every task each time the config is read",
)
ANSWER_VALUES = Bound(
    "answer_range size",
    2**53,
    "integers",
    "the uniform code's |Y| is stored as an integer and used as a float",
)
PROMPT_TOKENS = Bound(
    "tokens per prompt",
    32_768,
    "tokens",
    "a prompt is one sequence of one forward pass; the model's own context window is "
    "checked exactly once it is prepared",
)
PROMPT_TEXT = Bound(
    "prompt text per task",
    2**30,
    "bytes",
    "the prompts table holds each replicate's whole text on every example's row",
)
JOB_TOKENS = Bound(
    "tokens per job",
    10_000_000,
    "tokens",
    "about 10 hours of one job at SmolLM2's ~290 tokens/s on one CPU thread; the checks "
    "before any job tokenize every forward prompt (2 million tokens/s for SmolLM2's tokenizer)",
)
BATCH_TOKENS = Bound(
    "row-tokens per batch",
    131_072,
    "rows × context tokens",
    "every row of a batch carries its own copy of the context (a KV cache or activations): "
    "SmolLM2 caches 30 layers × 2 × 3 heads × 64 floats = 46 KB per token, 6 GB at this bound",
)
CANDIDATES = Bound(
    "integer-lens candidates",
    10_000,
    "integers",
    "each candidate is tokenized once per job and gives L + 1 rows per position read",
)
TREE_TOKENS = Bound(
    "tokens per token-tree pass",
    4_096,
    "tokens",
    "a tree pass attends with an n × (context + n) mask: with n = 4,096 after a 230-token "
    "context, SmolLM2's attention scores take 0.6 GB per layer",
)

BOUNDS = (
    X_VALUES,
    ANSWER_VALUES,
    PROMPT_TOKENS,
    PROMPT_TEXT,
    JOB_TOKENS,
    BATCH_TOKENS,
    CANDIDATES,
    TREE_TOKENS,
)
MAX_X_VALUES = X_VALUES.limit
MAX_ANSWER_VALUES = ANSWER_VALUES.limit
MAX_TREE_TOKENS = TREE_TOKENS.limit

# A BOS or EOS the tokenizer adds to a prompt.
SPECIAL_TOKENS = 2


class BoundError(ValueError):
    """A config asks a stage for more than a bound allows; the message names the key."""


def text_tokens(text: str) -> int:
    """Tokens of `text` at most, for a byte-level tokenizer: its UTF-8 bytes."""
    return len(text.encode("utf-8"))


@dataclass(frozen=True)
class Estimate:
    """One estimated quantity of one stage of one task, against its bound."""

    stage: str
    task: str
    key: str  # the config key that sets it (the first one to change)
    what: str  # how it was counted
    value: int
    bound: Bound
    fix: str  # what to change, for the message

    @property
    def within(self) -> bool:
        return self.value <= self.bound.limit

    def message(self) -> str:
        b = self.bound
        return (
            f"{self.key}: the {self.stage} stage of task {self.task!r} would need {self.what} "
            f"= {self.value:,} {b.unit}, more than the bound of {b.limit:,} ({b.name}: {b.why}); "
            f"{self.fix}"
        )


class _Texts:
    """Byte counts of a task's texts, from its x range: the longest prompts it can draw."""

    def __init__(self, task: Task):
        xs = list(task.xs)
        ys = task.fn.values(xs)
        queries = sorted((text_tokens(task.query_text(x)) for x in xs), reverse=True)
        answers = sorted(
            (text_tokens(task.answer_text(y) + task.separator) for y in ys), reverse=True
        )
        self.prefix = text_tokens(task.prefix)
        self._queries = [0, *accumulate(queries)]
        self._answers = [0, *accumulate(answers)]
        self.longest_query = queries[0]
        self.longest_answer = answers[0]
        # The probe asks every x of the range once per k.
        self.every_query = sum(queries) + sum(answers)

    def context(self, k: int) -> int:
        """Tokens of k examples and the next query, at most, specials included."""
        return self._queries[k + 1] + self._answers[k] + self.prefix + SPECIAL_TOKENS

    def prompt(self, n: int) -> int:
        """Tokens of a whole prompt of n examples at most (the text ends with the prefix)."""
        return self._queries[n] + self._answers[n] + self.prefix + SPECIAL_TOKENS


def candidate_texts(task: Task, low: int, high: int) -> list[str]:
    """Each candidate's text from the scoring boundary: lead, digits, terminator."""
    return [task.lead + str(c) + task.terminator for c in range(low, high + 1)]


def trie_nodes(texts: list[str]) -> int:
    """Nodes of the texts' character trie that branch, with their ancestors (the root aside).

    `iclprobe.trie` runs these nodes, one token each, for every example read;
    with one token per character this is its count exactly.
    """
    children: dict[str, set[str]] = {}
    for text in texts:
        for depth in range(len(text)):
            children.setdefault(text[:depth], set()).add(text[depth])
    branching = [node for node, kids in children.items() if len(kids) > 1]
    return len({node[:d] for node in branching for d in range(1, len(node) + 1)})


def estimates(settings: Settings) -> Iterator[Estimate]:
    """Every enabled stage's estimated work per task, in stage order.

    A generator: `check_bounds` stops at the first estimate beyond its bound,
    before a later one builds anything that size (the prompts' bounds come
    first, and they bound the replicate count the later stages list).
    """
    for name, task in settings.tasks.items():
        yield from _task_estimates(settings, name, task)


def _task_estimates(settings: Settings, name: str, task: Task) -> Iterator[Estimate]:
    where = f"tasks.{name}"
    texts = _Texts(task)
    n, reps = task.n_examples, task.replicates
    prompt = texts.prompt(n)

    def add(stage, key, what, value, bound, fix):
        return Estimate(stage, name, key, what, value, bound, fix)

    yield add(
        "prompts",
        f"{where}.n_examples",
        f"a longest prompt of {n:,} examples",
        prompt,
        PROMPT_TOKENS,
        f"lower {where}.n_examples, narrow its x_range or shorten the template",
    )
    text = prompt - SPECIAL_TOKENS
    yield add(
        "prompts",
        "replicates",
        f"{reps:,} replicates × {n:,} rows × {text:,} bytes",
        reps * n * text,
        PROMPT_TEXT,
        f"lower replicates or {where}.n_examples",
    )
    forward = settings.forward
    yield add(
        "forward",
        "replicates",
        f"{reps:,} replicates × {prompt:,} tokens",
        reps * prompt,
        JOB_TOKENS,
        f"lower replicates or {where}.n_examples",
    )
    yield add(
        "forward",
        "forward.batch_size",
        f"{forward.batch_size} rows × {prompt:,} tokens",
        forward.batch_size * prompt,
        BATCH_TOKENS,
        "lower forward.batch_size (it changes speed, not results)",
    )
    probe = settings.probe
    if probe.enabled:
        ks = probe.ks_for(task)
        n_reps = len(probe.replicates_for(task))
        per_rep = sum(texts.context(k) for k in ks) + len(ks) * texts.every_query
        yield add(
            "probe",
            "probe.replicates",
            f"{n_reps} replicates × {per_rep:,} tokens ({len(ks)} contexts, and "
            f"{len(task.xs):,} queries after each)",
            n_reps * per_rep,
            JOB_TOKENS,
            f"lower probe.replicates, use fewer probe.ks or narrow {where}.x_range",
        )
        context = texts.context(max(ks))
        yield add(
            "probe",
            "probe.batch_size",
            f"{probe.batch_size} queries × {context:,} context tokens (k = {max(ks)})",
            probe.batch_size * context,
            BATCH_TOKENS,
            "lower probe.batch_size (it changes speed and memory, not results)",
        )
    if settings.lens.enabled:
        yield from _lens_estimates(settings, name, task, texts)
    heads = settings.heads
    if heads.enabled:
        n_reps = len(heads.replicates_for(task))
        yield add(
            "heads",
            "heads.replicates",
            f"{n_reps} replicates × {prompt:,} tokens",
            n_reps * prompt,
            JOB_TOKENS,
            "lower heads.replicates",
        )
        causal = heads.causal_examples_for(task)
        if causal:
            context = texts.context(max(causal) - 1)
            yield add(
                "heads",
                "heads.causal.batch_rows",
                f"{heads.batch_rows} rows × {context:,} context tokens (example {max(causal)})",
                heads.batch_rows * context,
                BATCH_TOKENS,
                "lower heads.causal.batch_rows (it changes speed and memory, not results)",
            )
    patching = settings.patching
    if patching.enabled:
        target = settings.tasks.get(task.patch_target)
        k = patching.examples_for(task, target)
        n_reps = len(patching.replicates_for(task))
        target_context = 0 if target is None else _Texts(target).context(k)
        query = texts.longest_query + texts.longest_answer
        per_rep = texts.context(k) + target_context + 2 * patching.pairs * query
        yield add(
            "patching",
            "patching.replicates",
            f"{n_reps} replicates × {per_rep:,} tokens (the contexts and {patching.pairs} pairs' "
            "queries; the per-layer patches come on top)",
            n_reps * per_rep,
            JOB_TOKENS,
            "lower patching.replicates or patching.pairs",
        )


def _lens_estimates(settings: Settings, name: str, task: Task, texts: _Texts) -> Iterator[Estimate]:
    lens = settings.lens
    integer_reps = len(lens.integer_replicates_for(task))
    examples = len(lens.examples_for(task))
    key = "lens.integers.candidate_range"
    nodes = 0
    if integer_reps:
        low, high = lens.candidate_bounds(task)
        count = high - low + 1
        how = key if lens.candidate_range is not None else "by default min(0, min y) … 4·max(y)"
        fix = (
            f"set {key}: [low, high] to at most {CANDIDATES.limit:,} integers around the "
            "answers, or lens.integers.enabled: false"
        )
        yield Estimate(
            "lens", name, key, f"candidates {low} … {high} ({how})", count, CANDIDATES, fix
        )
        if count > CANDIDATES.limit:
            return  # never build the trie of that many (a caller may read on past a refusal)
        nodes = trie_nodes(candidate_texts(task, low, high))
        yield Estimate(
            "lens",
            name,
            key,
            f"{examples} examples × {nodes:,} trie nodes of candidates {low} … {high} in one pass",
            examples * nodes,
            TREE_TOKENS,
            f"narrow {key}, or read fewer lens.examples",
        )
    reps = set(lens.replicates_for(task)) | set(lens.integer_replicates_for(task))
    prompt = texts.prompt(task.n_examples)
    yield Estimate(
        "lens",
        name,
        "lens.replicates",
        f"{len(reps)} replicates × {prompt:,} tokens + {integer_reps} × {examples} examples "
        f"× {nodes:,} trie nodes",
        len(reps) * prompt + integer_reps * examples * nodes,
        JOB_TOKENS,
        "lower lens.replicates or lens.integers.replicates",
    )


def check_bounds(settings: Settings) -> list[Estimate]:
    """Raise BoundError at the first estimate beyond its bound; else return the estimates."""
    out = []
    for estimate in estimates(settings):
        if not estimate.within:
            raise BoundError(estimate.message())
        out.append(estimate)
    return out
