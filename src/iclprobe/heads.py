"""Which attention heads write the answer: direct logit attribution and mean-ablation.

Both look at the decision position of an answer (`iclprobe.tokens`: the position
whose next token is the first token holding a character of y) and at that token,
the *target*.

Direct logit attribution. The residual stream entering the final norm is a sum

    resid[L] = embed + Σ_ℓ (attn_ℓ + mlp_ℓ),    attn_ℓ = Σ_h z_h W_h + b_O,

with Gemma's post-attention norm around attn_ℓ made linear by freezing its RMS
at the clean run. With the final norm's scale frozen at the clean resid[L]
(`readout.freeze_final_norm`), the read-out of a sum is the sum of read-outs,
so each component c contributes `frozen_norm(c) · (W_U[t] − mean_v W_U[v])`.
Centring: these add up to the *centred logit* of the target, its logit minus
the mean logit over the vocabulary (`readout.centred_unembedding`), which does
not depend on a choice of competing token; the constant part (the final
LayerNorm's bias and the unembedding bias, centred) is the component
`final_bias`. For Gemma 2 this is the logit *before* soft-capping
(`tanh(l / cap) · cap` is not linear, so it cannot be split).

Components, one row each (`layer`, `head`): `embed` (layer 0: token and
position embeddings as they enter block 1), `head` (layer ℓ, head h: one row
per *query* head, so a grouped-query model such as SmolLM2 with 9 query and 3
key/value heads has 9 rows per layer), `attn_bias` (the output projection's
bias, where it has one), `mlp` (layer ℓ, its bias included) and `final_bias`
(no layer), where the model has them.

Causal effect (mean-ablation, as function-vector work measures heads). For each
head, P(correct answer) — the whole answer span under the scoring convention,
teacher-forced — when that head's output at the decision position is replaced
by its mean over the *same example* in the *other* selected replicates (leave
one out: as many examples before it, other x values), everything
downstream recomputed. The text before the decision position is the same for
every ablation, so its KV cache comes from the attribution pass, cropped; the
H heads of a layer (of a few layers) run as one batch of rows over [decision
token, answer tokens…], each row with one head replaced at suffix position 0
(so SmolLM2's 270 heads cost 270 rows of 2–4 tokens per prompt). The answer tokens
that come before the decision position (the space before a positive y, for
SmolLM2) are predicted before the edit and keep their clean log-probability.
Clean log-probabilities are the forward stage's (its logits cache): `p_correct`
is exp(logprob) of the forward table, and `effect` = ablated − clean P(correct).

Numerical floor. Every ablation batch also runs one row with no head replaced;
its log P against the forward stage's clean one is the float32 disagreement of
this path (`iclprobe.floor`). The table carries the job's floor (`floor_nats`),
the smallest change of P it resolves per row (`effect_floor` = p_correct ·
(e^floor − 1)) and `effect_resolved`; summaries and figures rank only resolved
effects.

Shapes follow the glossary of `iclprobe.anatomy`; n is the number of decision
positions looked at in one replicate.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from iclprobe.anatomy import Anatomy, anatomy_of
from iclprobe.floor import floor_nats
from iclprobe.forward import encode_prompts
from iclprobe.hooks import capture_branches, capture_heads, capture_residual, edit_heads
from iclprobe.prefix import Prefix, encode_prefixes, run_suffixes
from iclprobe.readout import centred_bias, centred_unembedding, freeze_final_norm, freeze_norm
from iclprobe.tokens import EncodedSequence

log = logging.getLogger(__name__)

CENTRING = (
    "contribution = frozen final norm (scale from the clean run) of the component, dotted with "
    "the target's unembedding row minus the vocabulary's mean row; the contributions add up to "
    "the target's logit minus the mean logit over the vocabulary (before Gemma 2's soft-cap); "
    "target = the first token holding a character of y; Gemma's post-attention norm is frozen "
    "at the clean run too"
)
ABLATION = (
    "each head's output (its slice of the output projection's input) at the decision position "
    "replaced by its mean over the same example in the other selected replicates (leave-one-out); "
    "p = P(whole answer span) teacher-forced, effect = ablated - clean"
)


# Column -> type of the heads table, in its order.
SCHEMA = {
    "model": pl.String,
    "task": pl.String,
    "replicate": pl.Int64,
    "example": pl.Int64,
    "x": pl.Int64,
    "y": pl.Int64,
    "decision_position": pl.Int64,
    "target_token_id": pl.Int64,
    "target_token": pl.String,
    "layer": pl.Int64,
    "component": pl.String,
    "head": pl.Int64,
    "contribution": pl.Float64,
    "centred_logit": pl.Float64,
    "p_correct": pl.Float64,
    "ablated_p_correct": pl.Float64,
    "effect": pl.Float64,
    "floor_nats": pl.Float64,
    "effect_floor": pl.Float64,
    "effect_resolved": pl.Boolean,
}


@dataclass
class CleanRun:
    """One clean pass over a replicate, read at n decision positions.

    `prefixes` are the pass's KV cache cropped to the text before each
    decision position asked for (the contexts of the ablations); the rest is
    what the residual stream is made of at the n positions.
    """

    prefixes: dict[int, Prefix]  # decision position -> the context before it
    heads: dict[int, torch.Tensor]  # layer -> (n, H, D)
    mlp: dict[int, torch.Tensor]  # layer -> (n, d)
    embed: torch.Tensor  # (n, d): the residual stream entering block 1
    final: torch.Tensor  # (n, d): the residual stream entering the final norm


@dataclass
class Attribution:
    """Direct contributions to the centred logit of each position's target."""

    embed: torch.Tensor  # (n,)
    heads: torch.Tensor  # (n, L, H)
    attn_bias: torch.Tensor | None  # (n, L)
    mlp: torch.Tensor  # (n, L)
    final_bias: torch.Tensor | None  # (n,)
    centred_logit: torch.Tensor  # (n,): from the model's own final norm and unembedding

    def total(self) -> torch.Tensor:
        """The sum of every component: (n,)."""
        total = self.embed + self.heads.sum((1, 2)) + self.mlp.sum(1)
        if self.attn_bias is not None:
            total = total + self.attn_bias.sum(1)
        if self.final_bias is not None:
            total = total + self.final_bias
        return total


@torch.inference_mode()
def clean_run(
    model, anatomy: Anatomy, ids: list[int], positions: list[int], contexts: list[int] = ()
) -> CleanRun:
    """Run `ids` once, capturing what writes the residual stream at `positions`.

    `contexts`: decision positions whose preceding text becomes a prefix for
    ablations (the pass's cache cropped to it); nothing is unembedded.
    """
    at = torch.tensor(positions, device=anatomy.unembed.weight.device)  # (n,)

    def select(t: torch.Tensor) -> torch.Tensor:
        return t[0, at.to(t.device)]  # (1, S, …) -> (n, …)

    layers = [0, anatomy.n_layers]
    with (
        capture_heads(anatomy, select) as heads,
        capture_branches(anatomy, select) as branches,
        capture_residual(anatomy, select, layers=layers) as resid,
    ):
        prefixes = encode_prefixes(model, ids, list(contexts))
    return CleanRun(
        dict(zip(contexts, prefixes, strict=True)),
        heads,
        branches["mlp"],
        resid[0],
        resid[anatomy.n_layers],
    )


@torch.inference_mode()
def direct_attribution(anatomy: Anatomy, run: CleanRun, targets: torch.Tensor) -> Attribution:
    """Each component's contribution to the centred logit of `targets` (n,)."""
    final = freeze_final_norm(anatomy, run.final)  # scale (n, 1) from the clean run
    direction = centred_unembedding(anatomy, targets)  # (n, d)

    def read(component: torch.Tensor) -> torch.Tensor:
        """(n, d) -> (n,), or (n, k, d) -> (n, k)."""
        u = direction if component.dim() == 2 else direction.unsqueeze(-2)
        return (final(component) * u).sum(-1)

    n = targets.shape[0]
    heads, biases = [], []
    for layer in range(1, anatomy.n_layers + 1):
        z = run.heads[layer].float()  # (n, H, D)
        weights = anatomy.head_weights(layer).float().to(z.device)  # (H, D, d)
        per_head = torch.einsum("nhk,hkd->nhd", z, weights)
        bias = anatomy.head_bias(layer)
        bias = None if bias is None else bias.float().to(z.device).expand(n, -1)  # (n, d)
        if anatomy.branch_norm:
            # Gemma normalises the projection's output before the residual add: freeze
            # that norm at the clean output, so the heads' shares stay additive.
            projected = per_head.sum(1) if bias is None else per_head.sum(1) + bias  # (n, d)
            norm = freeze_norm(anatomy.attn_branch[layer - 1], anatomy.norm, projected)
            per_head = norm(per_head)  # (n, H, d)
            bias = None if bias is None else norm(bias)
        heads.append(read(per_head))  # (n, H)
        biases.append(None if bias is None else read(bias))  # (n,)
    mlp = torch.stack([read(run.mlp[layer]) for layer in range(1, anatomy.n_layers + 1)], 1)

    unembed_bias = centred_bias(anatomy, targets)  # (n,) or None
    constants = [] if final.bias is None else [(final.bias * direction).sum(-1)]
    constants += [] if unembed_bias is None else [unembed_bias]
    normed = anatomy.final_norm(run.final).float()  # (n, d)
    logit = (normed * direction).sum(-1)  # (n,)
    return Attribution(
        embed=read(run.embed),
        heads=torch.stack(heads, 1),  # (n, L, H)
        attn_bias=None if biases[0] is None else torch.stack(biases, 1),  # (n, L)
        mlp=mlp,  # (n, L)
        final_bias=sum(constants) if constants else None,
        centred_logit=logit if unembed_bias is None else logit + unembed_bias,
    )


def _replace_at_decision(rows: torch.Tensor, values: torch.Tensor):
    """An edit of z (B, S, H, D) that sets head rows[i] - first of row rows[i] at position 0."""
    heads = torch.arange(len(rows))

    def edit(z: torch.Tensor) -> torch.Tensor:
        z = z.clone()
        # (H, D) into H rows, one head each; on the block's device (a model may be split)
        z[rows.to(z.device), 0, heads.to(z.device)] = values.to(z.device, z.dtype)
        return z

    return edit


@dataclass
class Ablations:
    """`ablated_logprobs`'s result: per head, and the unedited control row of each batch."""

    logprobs: torch.Tensor  # (L, H): log P(targets) with that head replaced
    unedited: torch.Tensor  # (n batches,): log P(targets) of each batch's row left clean


@torch.inference_mode()
def ablated_logprobs(
    model,
    anatomy: Anatomy,
    prefix: Prefix,
    suffix: list[int],
    targets: list[int],
    means: torch.Tensor,
    layers_per_batch: int = 1,
) -> Ablations:
    """log P(targets) with one head at a time replaced at suffix position 0: (L, H).

    `suffix` (S tokens) starts with the decision token; `targets` (S) are the
    tokens each suffix position predicts; `means` (L, H, D) the replacement of
    each head's output. Row h of a layer's batch replaces head h only. Each
    batch also runs one row with no head replaced: it should give the clean
    log P, and how far it does not is the float32 floor of this path
    (`numerical_floor`), measured in the same batch shapes as the ablations.
    """
    if len(suffix) != len(targets):
        raise ValueError(f"{len(suffix)} suffix tokens but {len(targets)} targets")
    n_layers, n_heads = anatomy.n_layers, anatomy.n_heads
    device = anatomy.unembed.weight.device
    out = torch.empty(n_layers, n_heads)
    unedited = []
    target = torch.tensor(targets, device=device)  # (S,)
    steps = torch.arange(len(suffix), device=device)  # (S,)
    for first in range(1, n_layers + 1, layers_per_batch):
        layers = list(range(first, min(first + layers_per_batch, n_layers + 1)))
        with ExitStack() as edits:
            for i, layer in enumerate(layers):
                rows = torch.arange(i * n_heads, (i + 1) * n_heads, device=device)  # (H,)
                edit = _replace_at_decision(rows, means[layer - 1].to(device))
                edits.enter_context(edit_heads(anatomy, layer, edit))
            # The last row is the control: no edit touches it.
            run = run_suffixes(model, prefix, [suffix] * (len(layers) * n_heads + 1))
        logp = run.logits.log_softmax(-1)  # (B, S, V)
        picked = logp[:, steps.to(logp.device), target.to(logp.device)].sum(-1).cpu()  # (B,)
        out[first - 1 : layers[-1]] = picked[:-1].view(len(layers), n_heads)
        unedited.append(picked[-1])
        # Freed before the next batch runs: else two batches' cache copies and logits
        # are alive at once, twice the stage's peak memory (iclprobe.cost).
        del run, logp
    return Ablations(out, torch.stack(unedited))


# ------------------------------------------------------------------- the stage


@dataclass
class _Replicate:
    """One replicate's clean run, where its selected examples sit, and their clean scores."""

    replicate: int
    sequence: EncodedSequence
    examples: list[int]  # 1-based, in the order of the run's positions
    run: CleanRun
    attribution: Attribution
    token_logprobs: dict[int, list[float]]  # example -> the forward stage's, per answer token

    def decision(self, example: int) -> int:
        return self.sequence.decision[example - 1]

    def span(self, example: int) -> list[int]:
        return self.sequence.answer_tokens[example - 1]

    def heads_at(self, example: int) -> torch.Tensor:
        """Every head's output at `example`'s decision position: (L, H, D)."""
        i = self.examples.index(example)
        return torch.stack([self.run.heads[layer][i] for layer in sorted(self.run.heads)])

    def logprob(self, example: int, through: int | None = None) -> float:
        """Clean log P(answer span); only its tokens at index ≤ `through`, if given."""
        pairs = zip(self.span(example), self.token_logprobs[example], strict=True)
        return sum(lp for t, lp in pairs if through is None or t <= through)


def _run_replicate(model, anatomy, replicate, seq: EncodedSequence, forward, examples, causal):
    decisions = [seq.decision[e - 1] for e in examples]
    contexts = [seq.decision[e - 1] for e in causal]
    run = clean_run(model, anatomy, seq.input_ids[: max(decisions) + 1], decisions, contexts)
    device = anatomy.unembed.weight.device
    targets = torch.tensor([seq.input_ids[d + 1] for d in decisions], device=device)  # (n,)
    scores = forward.filter(pl.col("replicate") == replicate, pl.col("example").is_in(examples))
    token_logprobs = dict(zip(scores["example"], scores["token_logprobs"].to_list(), strict=True))
    attribution = direct_attribution(anatomy, run, targets)
    return _Replicate(replicate, seq, examples, run, attribution, token_logprobs)


def _attribution_frame(rep: _Replicate) -> pl.DataFrame:
    """Long rows (example, layer, component, head, contribution) of one replicate."""
    a = rep.attribution
    n, n_layers, n_heads = a.heads.shape
    examples = np.array(rep.examples)
    layers = np.arange(1, n_layers + 1)
    parts = [
        pl.DataFrame(
            {
                "example": examples.repeat(n_layers * n_heads),
                "layer": np.tile(layers.repeat(n_heads), n),
                "component": "head",
                "head": np.tile(np.arange(n_heads), n * n_layers),
                "contribution": a.heads.reshape(-1).cpu().numpy(),
            }
        )
    ]
    per_layer = {"mlp": a.mlp, "attn_bias": a.attn_bias}
    for component, values in per_layer.items():
        if values is not None:
            parts.append(
                pl.DataFrame(
                    {
                        "example": examples.repeat(n_layers),
                        "layer": np.tile(layers, n),
                        "component": component,
                        "contribution": values.reshape(-1).cpu().numpy(),
                    }
                )
            )
    constants = {"embed": (a.embed, 0), "final_bias": (a.final_bias, None)}
    for component, (values, layer) in constants.items():
        if values is not None:
            parts.append(
                pl.DataFrame(
                    {
                        "example": examples,
                        "layer": pl.Series([layer] * n, dtype=pl.Int64),
                        "component": component,
                        "contribution": values.cpu().numpy(),
                    }
                )
            )
    rows = pl.concat(parts, how="diagonal_relaxed")
    decisions = [rep.decision(e) for e in rep.examples]
    per_example = pl.DataFrame(
        {
            "example": examples,
            "decision_position": decisions,
            "target_token_id": [rep.sequence.input_ids[d + 1] for d in decisions],
            "centred_logit": a.centred_logit.cpu().numpy(),
            "p_correct": np.exp([rep.logprob(e) for e in rep.examples]),
        }
    )
    return rows.join(per_example, on="example", how="left").with_columns(
        pl.lit(rep.replicate).alias("replicate")
    )


def _leave_one_out_means(runs: list[_Replicate], replicate: int, example: int) -> torch.Tensor:
    """Each head's output at `example`, averaged over the replicates other than `replicate`."""
    others = [rep.heads_at(example) for rep in runs if rep.replicate != replicate]
    return torch.stack(others).mean(0)  # (L, H, D)


def _ablate(model, anatomy, rep: _Replicate, example: int, means, layers_per_batch):
    """Ablated P(correct) for every head at one example of one replicate; tokens run; and
    how far each batch's unedited row is from the clean log P (nats, the floor's samples)."""
    ids, decision, span = rep.sequence.input_ids, rep.decision(example), rep.span(example)
    prefix = rep.run.prefixes[decision]
    suffix = ids[decision : span[-1]]  # the decision token and the answer tokens it leads to
    targets = ids[decision + 1 : span[-1] + 1]
    # Answer tokens up to the decision token are predicted before the edit: clean.
    unaffected = rep.logprob(example, through=decision)
    run = ablated_logprobs(model, anatomy, prefix, suffix, targets, means, layers_per_batch)
    ablated = unaffected + run.logprobs  # (L, H)
    deviation = (unaffected + run.unedited - rep.logprob(example)).abs()  # (n batches,)
    n_layers, n_heads = ablated.shape
    frame = pl.DataFrame(
        {
            "replicate": rep.replicate,
            "example": example,
            "layer": np.arange(1, n_layers + 1).repeat(n_heads),
            "component": "head",
            "head": np.tile(np.arange(n_heads), n_layers),
            "ablated_p_correct": ablated.exp().reshape(-1).double().numpy(),
        }
    )
    return frame, len(suffix) * (n_layers * n_heads + len(run.unedited)), deviation


def _check_decisions(replicates, encoded, forward: pl.DataFrame) -> None:
    """Our decision positions must be the forward stage's: the same tokens were scored."""
    ours = pl.DataFrame(
        {
            "replicate": [
                r for r, seq in zip(replicates, encoded, strict=True) for _ in seq.decision
            ],
            "example": [i for seq in encoded for i in range(1, len(seq.decision) + 1)],
            "ours": [d for seq in encoded for d in seq.decision],
        }
    )
    joined = ours.join(
        forward.select("replicate", "example", "decision_position"), on=["replicate", "example"]
    )
    bad = joined.filter(pl.col("ours") != pl.col("decision_position"))
    if joined.height != ours.height or bad.height:
        row = bad.row(0, named=True) if bad.height else None
        raise ValueError(
            "the forward table does not match these prompts and this tokenizer "
            f"(first mismatch: {row}); rerun the forward stage"
        )


def _rate(what: str, done: int, total: int, tokens: int, started: float) -> None:
    elapsed = time.monotonic() - started
    rate = tokens / max(elapsed, 1e-9)
    log.info("%s %d/%d: %d tokens, %.1f s, %.0f tokens/s", what, done, total, tokens, elapsed, rate)


def run_heads(
    prompts: pl.DataFrame,
    forward: pl.DataFrame,
    model,
    tokenizer,
    *,
    model_name: str,
    examples: list[int],
    replicates: list[int],
    causal_examples: list[int] = (),
    causal_replicates: list[int] = (),
    batch_rows: int = 27,
) -> pl.DataFrame:
    """Direct attribution at `examples` of `replicates`; mean-ablation at the causal ones.

    The means come from the attribution passes, so causal examples and
    replicates must be among `examples` and `replicates`, and there must be two
    replicates at least. `batch_rows` ablations run together (whole layers).
    Returns one row per (replicate, example, component[, layer][, head]).
    """
    if causal_examples and (len(replicates) < 2 or not set(causal_replicates) <= set(replicates)):
        raise ValueError(
            f"mean-ablation needs 2 replicates at least, and its replicates "
            f"{list(causal_replicates)} among the attribution's {list(replicates)}"
        )
    if not set(causal_examples) <= set(examples):
        raise ValueError(
            f"causal examples {list(causal_examples)} must be among the examples {list(examples)}"
        )
    anatomy = anatomy_of(model)
    chosen = prompts.filter(pl.col("replicate").is_in(list(replicates)))
    reps, encoded = encode_prompts(chosen, tokenizer)
    _check_decisions(reps, encoded, forward)
    runs, tokens, started = [], 0, time.monotonic()
    for replicate, seq in zip(reps, encoded, strict=True):
        causal = causal_examples if replicate in causal_replicates else []
        runs.append(_run_replicate(model, anatomy, replicate, seq, forward, examples, causal))
        tokens += max(runs[-1].decision(e) for e in examples) + 1
        _rate("attribution: replicate", len(runs), len(reps), tokens, started)
    error = max(
        float((r.attribution.total() - r.attribution.centred_logit).abs().max()) for r in runs
    )
    log.info("components add up to the centred logit within %.2g", error)
    frame = pl.concat([_attribution_frame(rep) for rep in runs], how="diagonal_relaxed")

    by_replicate = {rep.replicate: rep for rep in runs}
    todo = [(r, e) for r in causal_replicates for e in causal_examples]
    layers_per_batch = max(1, batch_rows // anatomy.n_heads)
    ablations, deviations, tokens, started = [], [], 0, time.monotonic()
    for replicate, example in todo:
        means = _leave_one_out_means(runs, replicate, example)
        ablation, n, deviation = _ablate(
            model, anatomy, by_replicate[replicate], example, means, layers_per_batch
        )
        ablations.append(ablation)
        deviations.append(deviation)
        tokens += n
        _rate("mean-ablation: example", len(ablations), len(todo), tokens, started)
    floor = None
    if ablations:
        keys = ["replicate", "example", "layer", "component", "head"]
        frame = frame.join(pl.concat(ablations), on=keys, how="left")
        floor = floor_nats(torch.cat(deviations).tolist())
        log.info(
            "numerical floor: unedited rows within %.2g nats of the clean log P; floor %.2g nats",
            float(torch.cat(deviations).max()),
            floor,
        )
    else:
        frame = frame.with_columns(pl.lit(None, pl.Float64).alias("ablated_p_correct"))
    return _finish(frame, prompts, tokenizer, model_name, floor)


def _finish(
    frame: pl.DataFrame, prompts: pl.DataFrame, tokenizer, model_name: str, floor: float | None
):
    """Add the keys, the target token's text, the effect and whether the floor resolves it;
    order columns and rows."""
    keys = prompts.select("task", "replicate", "example", "x", "y").unique()
    texts = {t: tokenizer.decode([t]) for t in frame["target_token_id"].unique().to_list()}
    component_order = pl.Enum(["embed", "head", "attn_bias", "mlp", "final_bias"])
    effect = pl.col("ablated_p_correct") - pl.col("p_correct")
    # |log ablated − log clean| > floor, written in P: the floor's share of the clean P.
    smallest = pl.col("p_correct") * math.expm1(floor) if floor is not None else pl.lit(None)
    return (
        frame.join(keys, on=["replicate", "example"], how="left", validate="m:1")
        .with_columns(
            pl.lit(model_name).alias("model"),
            pl.col("target_token_id")
            .replace_strict(texts, return_dtype=pl.String)
            .alias("target_token"),
            effect.alias("effect"),
            pl.lit(floor, pl.Float64).alias("floor_nats"),
        )
        .with_columns(
            pl.when(pl.col("effect").is_not_null()).then(smallest).alias("effect_floor"),
        )
        .with_columns((pl.col("effect").abs() > pl.col("effect_floor")).alias("effect_resolved"))
        .select(list(SCHEMA))
        .cast(SCHEMA)
        .sort("replicate", "example", pl.col("component").cast(component_order), "layer", "head")
    )
