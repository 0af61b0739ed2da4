"""Activation patching of the residual stream at the decision position: task or answer?

A *source* prompt shows the task's first k examples of a replicate and asks
for f(x_s); a *target* prompt has another context (none, or the first k
examples of another task) and asks for x_t. For every layer ℓ = 0…L, the
target's residual stream at its decision position is replaced by the
source's at its own, and we read what the target now says (DESIGN.md,
"Activation patching"; Hendel et al. 2023 call a vector that carries the task
this way a task vector):

- `p_task`: P(f(x_t)), the source's *task* applied to the target's query;
- `p_answer`: P(f(x_s)), the source's *answer* carried over;
- `p_target_default`: P of what the unpatched target answers greedily;
- `greedy_text` and `outcome`: the patched target's greedy answer, classed as
  target (its own default: nothing visible changed) / task / answer / other,
  in that order of precedence when two coincide; `first_outcome` classes the
  greedy token right after the patched position the same way (with one digit
  per token, the first digit: a patch at one position can carry the source's
  first digit while the positions after it, unpatched, write the rest);
- `default_distinct`: the target's own answer differs from f(x_t) and f(x_s)
  (or is no integer), so the three probabilities are of three answers.

Probabilities are scored as the forward stage scores answers (`iclprobe.tokens`):
the span from the whitespace before y through the terminator, teacher-forced.

Positions. The target's path is its prompt followed by f(x_t); its decision
position d is the position whose next token is the first token holding a
character of f(x_t), and the source's is that of f(x_s) in the source prompt.
A candidate whose tokens leave the target's path at or before d (SmolLM2
writes "␠-" for the space before a negative number, so -5 replaces the "␠" at
d of a positive f(x_t)) never passes through the patched position: its
probability is the unpatched target's, at every layer. The greedy answer obeys
the same rule: if the unpatched target's greedy tokens leave the path before
d, every layer's greedy answer is the unpatched one.

Numerical floor. Per replicate, the first pair's target is also patched with
its own activations, in the same tree: it should change nothing, and how far
it moves any candidate's log P at any layer is the float32 floor of this path
(`iclprobe.floor`). The table carries it (`floor_nats`) and marks each
probability's change from the unpatched target (`task_effect_resolved`,
`answer_effect_resolved`); the windows count a lead only beyond it.

Cost. Tokens before d are unchanged by a patch at d: the target's context is
run once per replicate, and every (pair, layer) patch recomputes only the
token at d and the candidates' tokens after it, as nodes of one token tree
(`iclprobe.tree`, `iclprobe.patches`). Never one full pass per layer.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import polars as pl

from iclprobe.anatomy import anatomy_of
from iclprobe.config import Task
from iclprobe.floor import floor_nats
from iclprobe.patches import (
    PairResult,
    SourceState,
    TargetPath,
    answer_pattern,
    patch_replicate,
    source_states,
    target_path,
)
from iclprobe.prompts import replicate_seed
from iclprobe.tokens import check_boundary

log = logging.getLogger(__name__)

OUTCOMES = ("target", "task", "answer", "other")  # in order of precedence
ZERO_SHOT = "zero_shot"

# Recorded in the table's metadata, so that a reader knows what was swapped and scored.
PATCHING_CONVENTION = (
    "residual stream at layer ℓ (0 = input of block 1, ℓ = output of block ℓ) at the target's "
    "decision position (for f(x_target)) replaced by the source's at its decision position "
    "(for f(x_source)); probabilities scored teacher-forced over the answer span (whitespace "
    "before y through the terminator); a candidate whose tokens leave the target's path at or "
    "before the patched position keeps the unpatched target's probability; outcome precedence "
    "target (the unpatched answer) > task > answer > other"
)


def draw_pairs(
    task: Task,
    replicate: int,
    n_pairs: int,
    source_context_xs: list[int],
    target_context_xs: list[int],
) -> list[tuple[int, int]]:
    """(x_source, x_target) pairs for one replicate, seeded and reproducible.

    x_source is not among the source context's x (a seen x would be copied),
    nor x_target among the target context's. x_target ≠ x_source and
    f(x_target) ≠ f(x_source), and where the range allows, x_target,
    f(x_target) and f(x_source) are all different (so a target that repeats
    its x is told apart from both transfers).
    """
    fn = task.fn
    rng = np.random.default_rng(replicate_seed(task.seed, f"{task.name}/patching", replicate))
    seen_s, seen_t = set(source_context_xs), set(target_context_xs)
    sources = [x for x in task.xs if x not in seen_s]
    if len(sources) < n_pairs:
        raise ValueError(
            f"patching.pairs: {n_pairs} pairs need as many x_source values, but task "
            f"{task.name!r} has only {len(sources)} x in {list(task.xs)[:1]}…{task.x_high} outside "
            "its context examples; lower patching.pairs or patching.context_examples"
        )
    pairs = []
    for x_s in rng.choice(sources, size=n_pairs, replace=False).tolist():
        y_s = fn(x_s)
        allowed = [x for x in task.xs if x != x_s and x not in seen_t and fn(x) != y_s]
        distinct = [x for x in allowed if len({x, fn(x), y_s}) == 3]
        pool = distinct or allowed
        if not pool:
            raise ValueError(
                f"task {task.name!r}: no x_target for x_source = {x_s} has f(x_target) ≠ "
                f"f(x_source) = {y_s} outside the target's context; widen x_range"
            )
        pairs.append((x_s, int(rng.choice(pool))))
    return pairs


# ------------------------------------------------------------------------ the stage


def _first_examples(prompts: pl.DataFrame, replicate: int, k: int) -> tuple[list[int], list[int]]:
    rows = prompts.filter(pl.col("replicate") == replicate).sort("example").head(k)
    if rows.height < k:
        raise ValueError(
            f"patching.context_examples: {k} examples asked for, but replicate {replicate} of "
            f"task {prompts['task'][0]!r} has {rows.height}"
        )
    return rows["x"].to_list(), rows["y"].to_list()


class _TokenCounter:
    """Counts the token positions every forward pass of a model computes."""

    def __init__(self, model):
        self.tokens = 0
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens += 0 if ids is None else ids.numel()

    def close(self):
        self._handle.remove()


def run_patching(
    source_prompts: pl.DataFrame,
    target_prompts: pl.DataFrame | None,
    model,
    tokenizer,
    *,
    model_name: str,
    task: Task,
    target_task: Task | None,
    replicates: list[int],
    pairs: int,
    context_examples: int,
) -> pl.DataFrame:
    """The patching table of one (model, task): one row per replicate, pair and layer.

    `source_prompts` is the task's prompts table; the target shows the first
    `context_examples` examples of the same replicate of `target_prompts`
    (`target_task`), or nothing when both are None (zero-shot).
    """
    check_boundary(tokenizer, task, model_name)
    anatomy = anatomy_of(model)
    records, deviations = [], []
    counter = _TokenCounter(model)
    started, cpu = time.monotonic(), time.process_time()
    try:
        for n_rep, replicate in enumerate(replicates, start=1):
            sx, sy = _first_examples(source_prompts, replicate, context_examples)
            tx, ty = [], []
            if target_task is not None:
                tx, ty = _first_examples(target_prompts, replicate, context_examples)
            examples = "" if target_task is None else target_task.context_text(tx, ty)
            drawn = draw_pairs(task, replicate, pairs, sx, tx)
            sources = source_states(
                model, anatomy, tokenizer, task, task.context_text(sx, sy), [s for s, _ in drawn]
            )
            paths = [target_path(tokenizer, task, examples, t) for _, t in drawn]
            # The control, in the same tree: the first pair's target patched with its own
            # activations. It should change nothing; how far it does is the floor.
            own = source_states(model, anatomy, tokenizer, task, examples, [drawn[0][1]])
            results = patch_replicate(
                model, anatomy, tokenizer, task, [*paths, paths[0]], [*sources, *own]
            )
            deviations += self_patch_deviations(results.pop())
            for n_pair, (source, path, result) in enumerate(
                zip(sources, paths, results, strict=True), start=1
            ):
                records.append(_record(replicate, n_pair, source, path, result))
            elapsed, used = time.monotonic() - started, time.process_time() - cpu
            log.info(
                "replicate %d/%d: %d pairs × %d layers; %d tokens in %.1f s wall, %.1f s CPU "
                "(%.0f tokens per CPU second)",
                n_rep,
                len(replicates),
                len(drawn),
                anatomy.n_layers + 1,
                counter.tokens,
                elapsed,
                used,
                counter.tokens / max(used, 1e-9),
            )
    finally:
        counter.close()
    floor = floor_nats(deviations)
    log.info(
        "numerical floor: self-patching moved log-probs by at most %.2g nats; floor %.2g nats",
        max(deviations),
        floor,
    )
    return _table(records, model_name, task, target_task, anatomy.n_layers, floor)


def self_patch_deviations(result: PairResult) -> list[float]:
    """|log P patched − log P unpatched| of a target patched with its own activations, for
    every candidate through the patched position and every layer (nats)."""
    return [
        abs(value - result.clean_logprobs[y])
        for y, values in result.logprobs.items()
        if result.on_path[y]
        for value in values
    ]


def _record(replicate, pair, source: SourceState, path: TargetPath, result: PairResult) -> dict:
    """Per-pair lists (one entry per layer); the table explodes them."""
    n = len(result.greedy_texts)
    default = result.y_default

    def per_layer(y):
        return [None] * n if y is None else result.logprobs[y]

    def clean(y):
        return None if y is None else result.clean_logprobs[y]

    # The greedy token after the patched position, classed like the whole answer.
    named = [("target", default), ("task", path.y), ("answer", source.y)]
    firsts = [
        None
        if token is None
        else next(
            (name for name, y in named if y is not None and result.candidate_first.get(y) == token),
            "other",
        )
        for token in result.first_tokens
    ]
    return {
        "replicate": replicate,
        "pair": pair,
        "x_source": source.x,
        "x_target": path.x,
        "y_task": path.y,
        "y_answer": source.y,
        "y_target_default": default,
        "layer": list(range(n)),
        "logprob_task": per_layer(path.y),
        "logprob_answer": per_layer(source.y),
        "logprob_target_default": per_layer(default),
        "greedy_text": result.greedy_texts,
        "first_outcome": firsts,
        "clean_logprob_task": clean(path.y),
        "clean_logprob_answer": clean(source.y),
        "clean_logprob_target_default": clean(default),
        "clean_greedy_text": result.clean_greedy_text,
        "source_logprob_answer": source.logprob,
        "answer_on_path": result.on_path[source.y],
    }


# Columns that are null where the unpatched target answers no integer.
_NULLABLE = {
    "y_target_default": pl.Int64,
    "logprob_target_default": pl.List(pl.Float64),
    "clean_logprob_target_default": pl.Float64,
}
_PER_LAYER = [
    "layer",
    "logprob_task",
    "logprob_answer",
    "logprob_target_default",
    "greedy_text",
    "first_outcome",
]
_PROBABILITIES = ["task", "answer", "target_default"]


def _table(
    records: list[dict],
    model_name: str,
    task: Task,
    target: Task | None,
    n_layers: int,
    floor: float,
):
    """One row per (replicate, pair, layer): probabilities, greedy answer and its class, and
    whether the floor resolves each probability's change from the unpatched target."""
    value = pl.col("greedy_text").str.extract(answer_pattern(task)).cast(pl.Int64)
    # The target's own answer first: where it coincides with f(x_t) or f(x_s), the
    # patch changed nothing that could be seen.
    outcome = (
        pl.when(value == pl.col("y_target_default"))
        .then(pl.lit("target"))
        .when(value == pl.col("y_task"))
        .then(pl.lit("task"))
        .when(value == pl.col("y_answer"))
        .then(pl.lit("answer"))
        .otherwise(pl.lit("other"))
    )
    default = pl.col("y_target_default")
    distinct = default.is_null() | ((default != pl.col("y_task")) & (default != pl.col("y_answer")))
    probabilities = [
        pl.col(f"{stem}logprob_{what}").exp().alias(f"{stem}p_{what}")
        for stem in ("", "clean_")
        for what in _PROBABILITIES
    ]
    return (
        pl.DataFrame(records, schema_overrides=_NULLABLE)
        .explode(_PER_LAYER)
        .with_columns(
            pl.lit(model_name).alias("model"),
            pl.lit(task.name).alias("task"),
            pl.lit(ZERO_SHOT if target is None else target.name).alias("target_context"),
            pl.col("layer").cast(pl.Int64),
            pl.lit(n_layers, dtype=pl.Int64).alias("n_layers"),
            (pl.col("layer") / n_layers).alias("relative_depth"),
            pl.col("source_logprob_answer").exp().alias("source_p_answer"),
            *probabilities,
        )
        .with_columns(
            value.alias("greedy_value"),
            distinct.alias("default_distinct"),
            pl.lit(floor, pl.Float64).alias("floor_nats"),
            *[
                ((pl.col(f"logprob_{what}") - pl.col(f"clean_logprob_{what}")).abs() > floor).alias(
                    f"{what}_effect_resolved"
                )
                for what in ("task", "answer")
            ],
        )
        .with_columns(outcome.alias("outcome"))
        .select(
            "model",
            "task",
            "target_context",
            "replicate",
            "pair",
            "layer",
            "n_layers",
            "relative_depth",
            "x_source",
            "x_target",
            "y_task",
            "y_answer",
            "y_target_default",
            "p_task",
            "p_answer",
            "p_target_default",
            "greedy_text",
            "greedy_value",
            "outcome",
            "first_outcome",
            "default_distinct",
            "clean_p_task",
            "clean_p_answer",
            "clean_p_target_default",
            "clean_greedy_text",
            "source_p_answer",
            "answer_on_path",
            "floor_nats",
            "task_effect_resolved",
            "answer_effect_resolved",
            pl.col("^.*logprob.*$"),
        )
        .sort("replicate", "pair", "layer")
    )
