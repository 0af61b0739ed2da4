"""The logit lens stage: what each layer predicts at the decision position.

Per replicate, ONE pass over its tokens captures the residual stream at every
layer 0…L (`iclprobe.anatomy`'s convention) at the decision positions of the
selected examples, and `readout` maps it to the vocabulary. Two tables:

- `lens`: per (replicate, example, layer) the top-k tokens with their
  probabilities and whether they are numeric, the rank and probability of the
  correct answer's first token (the first token holding a character of y),
  the total probability on tokens that can start an integer, and per
  (replicate, example) the first layer whose top-1 token is numeric.
- `lens_integers`: per layer the distribution over candidate integers
  (`iclprobe.integer_lens`), for the integer replicates, over the same pass's
  KV cache (each example's candidates see the context before its boundary).

A token is *numeric* when its text, leading whitespace aside, is digits with an
optional minus sign ("7", "␠12", "-3"); it *can start an integer* when that
text is a minus sign or digits, optionally led by a minus sign ("␠-" too).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from iclprobe.anatomy import Anatomy, anatomy_of
from iclprobe.config import LensSettings, Task
from iclprobe.floor import floor_nats
from iclprobe.forward import encode_prompts
from iclprobe.hooks import capture_residual
from iclprobe.integer_lens import candidate_paths, check_paths, integer_distributions
from iclprobe.prefix import Prefix, encode_prefixes
from iclprobe.readout import readout

log = logging.getLogger(__name__)

_NUMERIC = re.compile(r"\s*-?\d+")
_INTEGER_START = re.compile(r"\s*(-\d*|\d+)")
# Raw vocabulary strings (byte-level BPE's "Ġ7", SentencePiece's "▁7", "<0x37>")
# keep ASCII digits and "-" as they are, so only these need decoding to classify.
_MAY_BE_NUMBER = re.compile(r"[0-9-]")


@dataclass(frozen=True)
class VocabularyClasses:
    """Which token ids are numeric and which can start an integer: (V,) booleans."""

    numeric: torch.Tensor
    integer_start: torch.Tensor


def classify_vocabulary(tokenizer, vocab_size: int) -> VocabularyClasses:
    """Classify every row of an unembedding of `vocab_size` rows (extra rows: neither)."""
    numeric = torch.zeros(vocab_size, dtype=torch.bool)
    start = torch.zeros(vocab_size, dtype=torch.bool)
    n = min(vocab_size, len(tokenizer))
    raw = tokenizer.convert_ids_to_tokens(list(range(n)))
    maybe = [i for i, piece in enumerate(raw) if piece is not None and _MAY_BE_NUMBER.search(piece)]
    texts = tokenizer.batch_decode([[i] for i in maybe], clean_up_tokenization_spaces=False)
    for i, text in zip(maybe, texts, strict=True):
        numeric[i] = _NUMERIC.fullmatch(text) is not None
        start[i] = _INTEGER_START.fullmatch(text) is not None
    return VocabularyClasses(numeric, start)


@torch.inference_mode()
def top_tokens(
    anatomy: Anatomy,
    resid: torch.Tensor,
    answer_ids: torch.Tensor,
    classes: VocabularyClasses,
    top_k: int,
) -> dict[str, np.ndarray]:
    """The lens at E positions of every layer, from the stream `resid` (L+1, E, d).

    Returns arrays over (L+1, E, k): `token_id`, `prob`, `is_numeric`; over
    (L+1, E): `answer_rank`, `answer_prob` (of `answer_ids` (E,)),
    `p_integer_start`; over (E,): `first_numeric_layer` (−1 when none).
    """
    probs = readout(anatomy, resid).float().softmax(-1)  # (L+1, E, V)
    top_p, top_id = probs.topk(top_k, dim=-1)  # (L+1, E, k)
    numeric = classes.numeric.to(probs.device)
    start = classes.integer_start.to(probs.device)
    answer = answer_ids.to(probs.device)[None, :, None].expand(probs.shape[0], -1, 1)
    answer_p = probs.gather(-1, answer)  # (L+1, E, 1)
    top_numeric = numeric[top_id]  # (L+1, E, k)
    first = top_numeric[..., 0].int().argmax(0)  # (E,): the first True layer, 0 if none
    first = torch.where(top_numeric[..., 0].any(0), first, -1)
    return {
        "token_id": top_id.cpu().numpy(),
        "prob": top_p.cpu().numpy(),
        "is_numeric": top_numeric.cpu().numpy(),
        "answer_rank": ((probs > answer_p).sum(-1) + 1).cpu().numpy(),
        "answer_prob": answer_p[..., 0].cpu().numpy(),
        "p_integer_start": (probs * start).sum(-1).cpu().numpy(),
        "first_numeric_layer": first.cpu().numpy(),
    }


def _lens_frame(
    arrays: dict[str, np.ndarray], examples: list[int], answer_ids: list[int], texts: dict
) -> pl.DataFrame:
    """Rows (layer, example, rank) from `top_tokens`'s arrays, per-position values repeated."""
    n_layers, n_examples, k = arrays["token_id"].shape
    layer, example, rank = np.meshgrid(
        np.arange(n_layers), np.arange(n_examples), np.arange(k), indexing="ij"
    )
    per_position = {
        name: np.repeat(arrays[name][..., None], k, axis=-1).ravel()
        for name in ("answer_rank", "answer_prob", "p_integer_start")
    }
    first = arrays["first_numeric_layer"][example.ravel()]
    ids = arrays["token_id"].ravel()
    return pl.DataFrame(
        {
            "example": np.asarray(examples)[example.ravel()],
            "layer": layer.ravel(),
            "rank": rank.ravel() + 1,
            "token_id": ids,
            "token_text": [texts[i] for i in ids.tolist()],
            "prob": arrays["prob"].ravel(),
            "is_numeric": arrays["is_numeric"].ravel(),
            "answer_token_id": np.asarray(answer_ids)[example.ravel()],
            **per_position,
            "first_numeric_layer": first,
        }
    ).with_columns(
        # −1 (no layer's top-1 token is numeric) becomes null.
        pl.when(pl.col("first_numeric_layer") >= 0).then(pl.col("first_numeric_layer"))
    )


# Column types of the per-replicate parts (model, task, x and y are joined on after).
_LENS_SCHEMA = {
    "replicate": pl.Int64,
    "example": pl.Int64,
    "layer": pl.Int64,
    "rank": pl.Int64,
    "token_id": pl.Int64,
    "token_text": pl.String,
    "prob": pl.Float64,
    "is_numeric": pl.Boolean,
    "answer_token_id": pl.Int64,
    "answer_rank": pl.Int64,
    "answer_prob": pl.Float64,
    "p_integer_start": pl.Float64,
    "first_numeric_layer": pl.Int64,
}
_INTEGERS_SCHEMA = {
    "replicate": pl.Int64,
    "example": pl.Int64,
    "layer": pl.Int64,
    "candidate": pl.Int64,
    "logprob": pl.Float64,
}


def _integers_frame(logprobs: torch.Tensor, example: int, candidates: list[int]) -> pl.DataFrame:
    n_layers, n_candidates = logprobs.shape
    return pl.DataFrame(
        {
            "example": np.full(n_layers * n_candidates, example),
            "layer": np.repeat(np.arange(n_layers), n_candidates),
            "candidate": np.tile(np.asarray(candidates), n_layers),
            "logprob": logprobs.cpu().numpy().ravel(),
        }
    )


@dataclass(frozen=True)
class LensPlan:
    """What to look at: examples (1-based), replicates, and the integer lens's share.

    `candidates` is a sorted sequence (a lazy `range` from the settings); it is
    read only for the integer replicates, and empty when there are none.
    """

    examples: list[int]
    replicates: list[int]
    top_k: int
    integer_replicates: list[int]
    candidates: Sequence[int]

    @classmethod
    def for_task(cls, settings: LensSettings, task: Task) -> LensPlan:
        """The plan the config's lens settings make for `task`; the lens rule's params come
        from the same `LensSettings` helpers."""
        integer_replicates = settings.integer_replicates_for(task)
        return cls(
            examples=settings.examples_for(task),
            replicates=settings.replicates_for(task),
            top_k=settings.top_k,
            integer_replicates=integer_replicates,
            candidates=settings.candidates_for(task) if integer_replicates else range(0),
        )

    def candidate_range(self) -> list[int] | None:
        """[low, high] of the candidates, as the tables' metadata records it."""
        return [self.candidates[0], self.candidates[-1]] if self.candidates else None


@dataclass
class _ReplicateRead:
    """One pass over a replicate: the stream at its examples' positions, and their contexts."""

    decision: torch.Tensor  # (L+1, E, d) at the decision positions
    root: torch.Tensor | None  # (L+1, E, d) at each scoring boundary's predictor
    prefix: Prefix | None  # the pass's tokens and KV cache, when the integer lens needs it
    boundaries: list[int]  # per example, the length of the context before its boundary
    n_tokens: int


def _read_replicate(model, anatomy: Anatomy, seq, examples: list[int], integers: bool):
    """ONE pass over the replicate, up to the last position read, capturing every layer there."""
    decisions = [seq.decision[e - 1] for e in examples]
    boundaries = [seq.answer_tokens[e - 1][0] for e in examples] if integers else []
    positions = decisions + [b - 1 for b in boundaries]
    at = torch.tensor(positions, device=next(model.parameters()).device)
    end = max(positions) + 1
    with capture_residual(anatomy, select=lambda t: t[0, at.to(t.device)]) as resid:
        prefixes = encode_prefixes(model, seq.input_ids[:end], [end] if integers else [])
    stack = torch.stack([resid[layer] for layer in range(anatomy.n_layers + 1)])  # (L+1, P, d)
    n = len(examples)
    root = stack[:, n:] if integers else None
    return _ReplicateRead(stack[:, :n], root, prefixes[0] if integers else None, boundaries, end)


def _check_decisions(task: Task, rep: int, seq, rows: pl.DataFrame) -> None:
    decisions = [seq.decision[e - 1] for e in rows["example"]]
    recorded = rows["decision_position"].to_list()
    if decisions != recorded:
        raise ValueError(
            f"task {task.name!r}, replicate {rep}: decision positions {decisions} differ from "
            f"the forward table's {recorded}; the forward table is from another tokenizer or "
            "prompt file"
        )


def run_lens(
    forward: pl.DataFrame,
    prompts: pl.DataFrame,
    model,
    tokenizer,
    *,
    task: Task,
    plan: LensPlan,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The `lens` and `lens_integers` tables of one model and task."""
    anatomy = anatomy_of(model)
    classes = classify_vocabulary(tokenizer, anatomy.unembed.weight.shape[0])
    wanted = sorted(set(plan.replicates) | set(plan.integer_replicates))
    replicates, encoded = encode_prompts(
        prompts.filter(pl.col("replicate").is_in(wanted)), tokenizer
    )
    keys = forward.filter(
        pl.col("replicate").is_in(wanted) & pl.col("example").is_in(plan.examples)
    ).sort("replicate", "example")
    missing = set(wanted) - set(keys["replicate"].unique().to_list())
    if missing:
        raise ValueError(f"the forward table of task {task.name!r} has no replicates {missing}")
    paths = candidate_paths(tokenizer, task, plan.candidates) if plan.integer_replicates else []
    lens_parts, integer_parts, texts, deviations = [], [], {}, []
    started, n_tokens = time.monotonic(), 0
    for count, (rep, seq) in enumerate(zip(replicates, encoded, strict=True), start=1):
        rows = keys.filter(pl.col("replicate") == rep)
        _check_decisions(task, rep, seq, rows)
        examples = rows["example"].to_list()
        integers = rep in plan.integer_replicates
        read = _read_replicate(model, anatomy, seq, examples, integers)
        n_tokens += read.n_tokens
        if rep in plan.replicates:
            answer_ids = [seq.input_ids[seq.decision[e - 1] + 1] for e in examples]
            arrays = top_tokens(
                anatomy, read.decision, torch.tensor(answer_ids), classes, plan.top_k
            )
            for token in np.unique(arrays["token_id"]).tolist():
                if token not in texts:
                    texts[token] = tokenizer.decode([token], clean_up_tokenization_spaces=False)
            frame = _lens_frame(arrays, examples, answer_ids, texts)
            lens_parts.append(frame.with_columns(pl.lit(rep).alias("replicate")))
            deviations += _last_layer_deviations(arrays["answer_prob"][-1], seq, rows)
        if integers:
            for example, y in zip(examples, rows["y"], strict=True):
                answer = [seq.input_ids[t] for t in seq.answer_tokens[example - 1]]
                check_paths(tokenizer, task, plan.candidates, paths, y, answer)
            logprobs, run = integer_distributions(
                model, anatomy, read.prefix, paths, plan.candidates, read.boundaries, read.root
            )
            n_tokens += run
            for example, lp in zip(examples, logprobs, strict=True):
                part = _integers_frame(lp, example, plan.candidates)
                integer_parts.append(part.with_columns(pl.lit(rep).alias("replicate")))
        elapsed = time.monotonic() - started
        log.info(
            "replicate %d/%d (%s): %d tokens so far, %.1f s, %.0f tokens/s",
            count,
            len(replicates),
            "lens + integers" if integers else "lens",
            n_tokens,
            elapsed,
            n_tokens / max(elapsed, 1e-9),
        )
    floor = floor_nats(deviations)
    if floor is not None:
        log.info(
            "numerical floor: the last layer's read-out within %.2g nats of the forward "
            "stage's; floor %.2g nats",
            max(deviations),
            floor,
        )
    xy = keys.select("model", "task", "replicate", "example", "x", "y", "decision_position")
    lens = _finish(lens_parts, _LENS_SCHEMA, xy, ["layer", "rank"])
    lens = lens.with_columns(pl.lit(floor, pl.Float64).alias("floor_nats"))
    integer_table = _finish(
        integer_parts, _INTEGERS_SCHEMA, xy.drop("decision_position"), ["layer", "candidate"]
    )
    return lens, integer_table


def _last_layer_deviations(answer_prob: np.ndarray, seq, rows: pl.DataFrame) -> list[float]:
    """|log P(first answer token)| of the lens at layer L against the forward stage's (a plain
    pass): the float32 floor of the lens's path, per position read (nats)."""
    out = []
    for e, p, logprobs in zip(rows["example"], answer_prob, rows["token_logprobs"], strict=True):
        span = seq.answer_tokens[e - 1]
        plain = logprobs[seq.decision[e - 1] + 1 - span[0]]
        if p > 0:  # a probability that underflowed float32 says nothing of the rounding
            out.append(abs(math.log(float(p)) - plain))
    return out


def _finish(
    parts: list[pl.DataFrame], schema: dict, keys: pl.DataFrame, order: list[str]
) -> pl.DataFrame:
    """Concatenate, add model, task, x and y, and sort; the key columns first."""
    table = pl.concat([p.select(list(schema)).cast(schema) for p in parts]) if parts else None
    if table is None:
        table = pl.DataFrame(schema=schema)
    table = table.join(keys, on=["replicate", "example"], how="left", validate="m:1")
    return table.select(*keys.columns, pl.exclude(keys.columns)).sort(
        "replicate", "example", *order
    )


# Recorded in both tables' metadata, so a reader knows what the columns mean.
LENS_CONVENTION = {
    "layers": "0 = the residual stream entering block 1 (embeddings), l = output of block l, "
    "L = the model's output; read out through the final norm and the unembedding",
    "position": "the decision position: the token before the first token holding a character of y",
    "is_numeric": "token text, leading whitespace aside, is digits with an optional minus sign",
    "p_integer_start": "total probability of tokens whose text, leading whitespace aside, is "
    "a minus sign or digits with an optional minus sign",
    "integer_logprob": "candidate tokens teacher-forced from the scoring boundary; at each "
    "position the layer's read-out is normalised over the tokens that continue some candidate "
    "there, and the log-probabilities are summed along the candidate's tokens",
}
