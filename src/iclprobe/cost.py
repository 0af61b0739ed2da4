"""What each stage costs: tokens, FLOPs, time and peak memory from the model's shape.

No torch here: the Snakefile's SLURM resources read this at parse time, from
a prepared model's `config.json`. docs/cost.md explains every term and shows
the model against measurements (benchmarks/cost.py).

The model counts what the stages' code does (`iclprobe.forward`, `.lens`,
`.integer_lens`, `.heads`, `.probe`, `.patching`/`.patches`): which passes run,
over how many rows and new positions, over how long a cached context, which
positions are unembedded, which KV caches are copied, which (…, V) tensors
are made. A stage is a list of *parts* (e.g. the heads' attribution and
ablation); a part is a list of `Pass`es plus the work done outside the model
(read-outs through the unembedding, operations over vocabulary-sized
tensors, cache copies) and the memory it holds at its peak.

Token positions depend on the tokenizer; a `Layout` says how one task's
prompts tokenize (measured with a tokenizer, or estimated without one).
Decoding (the probe's greedy answers where the model leaves the forced
answer, patching's greedy answers) depends on what the model answers; the
model takes it as `Decoding` counts, and bounds it when they are unknown.

Shape glossary (as iclprobe.anatomy): L layers, d width, H query heads,
KV key/value heads, D head dimension, I MLP width, V vocabulary, b bytes per
weight or activation of the model's dtype; M positions in one pass
(rows × new tokens).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclprobe.trie import build_trie

if TYPE_CHECKING:
    from iclprobe.config import Settings, Task

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9

# Unembedding rows `readout.vocabulary_mean` converts to float32 at a time. A whole
# float32 copy of a bfloat16 128k × 4096 unembedding (Llama-3.1-8B) is 2.1 GB, which was
# the heads stage's largest transient there; 8192 rows are 134 MB.
MEAN_CHUNK_ROWS = 8192


# ---------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set a decoder-only transformer's cost, read from its config."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True  # the unembedding shares the token embedding's weights
    gated: bool = True  # a gated MLP (Llama, Qwen2, Gemma: 3 matrices) or a plain one (2)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelShape:
        """From a config.json dict (Llama, Qwen2, Gemma 2/3, GPT-2 and GPT-NeoX key names)."""
        if "n_embd" in config:  # GPT-2
            hidden, heads = config["n_embd"], config["n_head"]
            return cls(
                layers=config["n_layer"],
                hidden=hidden,
                heads=heads,
                kv_heads=heads,
                head_dim=hidden // heads,
                intermediate=config.get("n_inner") or 4 * hidden,
                vocab=config["vocab_size"],
                tied=config.get("tie_word_embeddings", True),
                gated=False,
            )
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        gated = config.get("model_type") != "gpt_neox"
        return cls(
            layers=config["num_hidden_layers"],
            hidden=hidden,
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            intermediate=config["intermediate_size"],
            vocab=config["vocab_size"],
            tied=config.get("tie_word_embeddings", not gated),
            gated=gated,
        )

    @classmethod
    def from_folder(cls, folder: Path | str) -> ModelShape:
        """From a prepared model folder's (or any HF folder's) config.json."""
        return cls.from_config(json.loads((Path(folder) / "config.json").read_text()))

    def block_products(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of every matrix of one block."""
        d, q, kv, i = (
            self.hidden,
            self.heads * self.head_dim,
            self.kv_heads * self.head_dim,
            self.intermediate,
        )
        mlp = [("gate_proj", d, i), ("up_proj", d, i)] if self.gated else [("up_proj", d, i)]
        return [
            ("q_proj", d, q),
            ("k_proj", d, kv),
            ("v_proj", d, kv),
            ("o_proj", q, d),
            *mlp,
            ("down_proj", i, d),
        ]

    @property
    def block_weights(self) -> int:
        """Matrix weights of all blocks."""
        return self.layers * sum(a * b for _, a, b in self.block_products())

    @property
    def parameters(self) -> int:
        """Every parameter: blocks, the embedding, the unembedding unless tied, the norms."""
        norms = (2 * self.layers + 1) * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.block_weights + embeddings + norms

    def weight_bytes(self, dtype: str) -> int:
        return self.parameters * BYTES[dtype]

    def kv_bytes(self, dtype: str) -> int:
        """Bytes of KV cache per cached position of one row: keys and values of every layer."""
        return 2 * self.layers * self.kv_heads * self.head_dim * BYTES[dtype]

    def activation_bytes(self, positions: int, dtype: str) -> int:
        """The largest transient inside one block for `positions` positions.

        The MLP holds three (M, I) tensors at once (gate activation, up projection,
        their product; two for a plain MLP) beside about six of width d (the
        residual, its norm, the attention's output and projections).
        """
        wide = 3 if self.gated else 2
        return positions * BYTES[dtype] * (wide * self.intermediate + 6 * self.hidden)


# Model shapes this project reasons about (docs/cost.md); their config.json values.
SHAPES = {
    "smollm2-135m": ModelShape(30, 576, 9, 3, 64, 1536, 49152, tied=True),
    "llama-3.2-1b": ModelShape(16, 2048, 32, 8, 64, 8192, 128256, tied=True),
    "llama-3.1-8b": ModelShape(32, 4096, 32, 8, 128, 14336, 128256, tied=False),
    "llama-3.1-70b": ModelShape(80, 8192, 64, 8, 128, 28672, 128256, tied=False),
}


# ---------------------------------------------------------------- token layout


@dataclass(frozen=True)
class Layout:
    """How one task's prompts tokenize: the positions the stages run and read.

    A query is `query` tokens through the scoring boundary ("(", x, ","; a
    mean over the x range, `query_max` the longest), an answer `answer` tokens
    covering its span (lead space, y, terminator), an example `example` tokens
    in all, separator included (SmolLM2 writes "),", " (", merging the
    separator into its neighbours). `lead` answer
    tokens sit at or before the decision position (1 where the space is its
    own token, 0 where it joins the number). `shared_query` tokens start
    every query alike (the "("). `trie_*` describe the integer lens's
    candidate trie: nodes run per context, of which `trie_reads` are read
    out over `trie_columns` vocabulary rows.
    """

    bos: int
    example: float
    query: float
    query_max: int
    answer: float
    answer_max: int
    lead: int
    shared_query: int
    trie_nodes: int
    trie_reads: int
    trie_columns: int
    trie_root_branches: bool = False

    def decision(self, example: int) -> float:
        """The decision position of example e (1-based) in a prompt."""
        return self.bos + (example - 1) * self.example + self.query + self.lead - 1

    def prompt(self, n_examples: int) -> float:
        """Tokens of a whole prompt (the next example's first token included, as rendered)."""
        return self.bos + n_examples * self.example + 1

    @classmethod
    def measure(cls, task: Task, tokenizer, candidates: list[int]) -> Layout:
        """From the task's prompts and queries, tokenized as the stages tokenize them."""
        from iclprobe.prompts import draw_examples, render
        from iclprobe.tokens import AnswerSpan, encode, encode_answer

        lengths, answers, leads = [], [], []
        for replicate in range(1, task.replicates + 1):
            xs, ys = draw_examples(task, replicate)
            text, spans = render(task, xs, ys)
            seq = encode(tokenizer, text, [AnswerSpan(*s) for s in spans])
            lengths.append(len(seq.input_ids))
            for tokens, decision in zip(seq.answer_tokens, seq.decision, strict=True):
                answers.append(len(tokens))
                leads.append(sum(t <= decision for t in tokens))
        bos = len(tokenizer("")["input_ids"])
        # The probe's queries run over the whole x range.
        rows = [
            encode_answer(tokenizer, task.query_text(x), task, y)
            for x, y in zip(task.xs, task.fn.values(task.xs), strict=True)
        ]
        shared = 0
        while all(shared < r.boundary and r.ids[shared] == rows[0].ids[shared] for r in rows):
            shared += 1
        paths = [
            encode_answer(tokenizer, task.query_text(task.x_low), task, c).answer_ids
            for c in candidates
        ]
        n = task.n_examples
        return cls._with_trie(
            bos=bos,
            example=(sum(lengths) / len(lengths) - bos - 1) / n,
            query=sum(r.boundary - bos for r in rows) / len(rows),
            query_max=max(r.boundary - bos for r in rows),
            answer=sum(answers) / len(answers),
            answer_max=max(answers),
            lead=round(sum(leads) / len(leads)),
            shared_query=max(shared - bos, 0),
            paths=paths,
            candidates=candidates,
        )

    @classmethod
    def estimate(
        cls, task: Task, candidates: list[int], numbers: str = "digits", bos: int = 0
    ) -> Layout:
        """Without a tokenizer, for the default template "({x}, {y})" and ", ".

        numbers="digits": one token per digit (SmolLM2, Llama-2, Qwen2, Gemma);
        "grouped": up to three digits per token (Llama-3, GPT-4's tokenizers).
        Either way "(", ",", " ", ")," and " (" are one token each and a minus
        sign is a token of its own; another template is counted as if it were
        this one (a rough estimate: measure with its tokenizer instead).
        """

        def tokens(value: int) -> int:
            digits = len(str(abs(value)))
            return (value < 0) + (digits if numbers == "digits" else math.ceil(digits / 3))

        def mean(values: Iterable[int]) -> float:
            values = list(values)
            return sum(values) / len(values)

        xs, ys = list(task.xs), task.fn.values(task.xs)
        query = 2 + mean(tokens(x) for x in xs)  # "(" x ","
        answer = 2 + mean(tokens(y) for y in ys)  # " " y "),"
        paths = []
        for c in candidates:
            text = str(abs(c))
            pieces = (
                list(text)
                if numbers == "digits"
                else [text[max(0, i - 3) : i] for i in range(len(text), 0, -3)][::-1]
            )
            paths.append([" ", *(["-"] if c < 0 else []), *pieces, "),"])
        return cls._with_trie(
            bos=bos,
            example=query + answer,
            query=query,
            query_max=2 + max(tokens(x) for x in xs),
            answer=answer,
            answer_max=2 + max(tokens(y) for y in ys),
            lead=1,
            shared_query=1,
            paths=paths,
            candidates=candidates,
        )

    @classmethod
    def _with_trie(cls, *, paths, candidates, **fields) -> Layout:
        trie = build_trie(list(candidates), [list(p) for p in paths])
        return cls(
            **fields,
            trie_nodes=len(trie.run.tokens),
            trie_reads=sum(trie.run.read),
            trie_columns=len(trie.columns),
            trie_root_branches=trie.root_branches,
        )


# ---------------------------------------------------------------- work


@dataclass(frozen=True)
class Pass:
    """One call of the model: `rows` × `tokens` new positions after `cached` cached ones.

    `masked`: attention runs under an explicit mask (padding, or a token
    tree's), so every query meets every key of cached + tokens; otherwise the
    causal triangle. `unembed`: positions unembedded, all rows together.
    `count`: identical passes.
    """

    rows: int
    tokens: int
    cached: int = 0
    masked: bool = False
    unembed: int = 0
    count: int = 1

    @property
    def positions(self) -> int:
        return self.rows * self.tokens * self.count

    def flops(self, shape: ModelShape) -> dict[str, int]:
        """Linear, attention and unembedding FLOPs of all `count` passes."""
        per_key = 4 * shape.layers * shape.heads * shape.head_dim  # QKᵀ and AV, 2 FLOPs each
        if self.masked:
            pairs = self.tokens * (self.cached + self.tokens)
        else:
            pairs = self.tokens * self.cached + self.tokens * (self.tokens + 1) // 2
        return {
            "linear": 2 * shape.block_weights * self.rows * self.tokens * self.count,
            "attention": per_key * self.rows * pairs * self.count,
            "unembed": 2 * shape.hidden * shape.vocab * self.unembed * self.count,
        }


@dataclass
class Part:
    """One phase of a stage: its passes, the work around them, and its peak memory.

    `readout`: positions read through the final norm and the full unembedding
    outside the model (the lens); `restricted`: (positions, vocabulary rows)
    read through a few rows only; `vocab_ops`: operation -> elements of
    float32 tensors over the vocabulary (softmax, top-k, …); `copies`: bytes of
    KV cache (or weights) copied; `memory`: named bytes held at the part's
    peak, the weights excluded.
    """

    name: str
    passes: list[Pass] = field(default_factory=list)
    readout: int = 0
    restricted: list[tuple[int, int]] = field(default_factory=list)
    vocab_ops: dict[str, int] = field(default_factory=dict)
    copies: int = 0
    memory: dict[str, int] = field(default_factory=dict)

    def run(self, p: Pass, kv: int) -> None:
        """Add a pass; one after a cache also copies that cache (`kv` bytes a position): the
        model's DynamicCache appends each layer's new keys and values with a concatenation."""
        self.passes.append(p)
        if p.cached:
            self.copies += p.rows * (p.cached + p.tokens) * kv * p.count

    def add_ops(self, elements: int, *ops: str, dtype: str = "float32") -> None:
        """Count operations over `elements`; "copy" (`.float()`) only outside float32."""
        for op in ops:
            if op == "copy" and BYTES[dtype] == 4:
                continue
            self.vocab_ops[op] = self.vocab_ops.get(op, 0) + elements

    def peak(self, memory: dict[str, int]) -> None:
        """Keep `memory` as this part's peak if it is larger than the one held."""
        if sum(memory.values()) > sum(self.memory.values()):
            self.memory = dict(memory)


@dataclass
class StageCost:
    """A stage's parts, and what they add up to."""

    stage: str
    shape: ModelShape
    dtype: str
    parts: list[Part]

    @property
    def passes(self) -> list[Pass]:
        return [p for part in self.parts for p in part.passes]

    @property
    def tokens(self) -> int:
        """Positions run through the blocks (rows × new tokens, padding included)."""
        return sum(p.positions for p in self.passes)

    def flops(self) -> dict[str, int]:
        total = {"linear": 0, "attention": 0, "unembed": 0, "readout": 0}
        for p in self.passes:
            for key, value in p.flops(self.shape).items():
                total[key] += value
        per_row = 2 * self.shape.hidden
        for part in self.parts:
            total["readout"] += per_row * self.shape.vocab * part.readout
            total["readout"] += sum(per_row * n * k for n, k in part.restricted)
        return total

    @property
    def weights(self) -> int:
        return self.shape.weight_bytes(self.dtype)

    def peak_part(self) -> Part:
        return max(self.parts, key=lambda part: sum(part.memory.values()))

    @property
    def transient(self) -> int:
        """Bytes above the weights at the stage's peak."""
        return sum(self.peak_part().memory.values())

    @property
    def peak(self) -> int:
        """Bytes at the stage's peak: weights and the largest part's memory."""
        return self.weights + self.transient

    def seconds(self, rates: Rates) -> float:
        return sum(rates.part_seconds(self.shape, part) for part in self.parts)


# ---------------------------------------------------------------- machine rates


def _interpolate(points: tuple[tuple[int, float], ...], m: float) -> float:
    """Seconds at m from measured (m, seconds) points: linear between them, ∝ m beyond."""
    if m <= 0:
        return 0.0
    points = tuple(sorted(points))
    if m <= points[0][0]:
        return points[0][1]
    for (m0, s0), (m1, s1) in itertools.pairwise(points):
        if m <= m1:
            return s0 + (s1 - s0) * (m - m0) / (m1 - m0)
    m_last, s_last = points[-1]
    return s_last * m / m_last


@dataclass(frozen=True)
class Rates:
    """Seconds a machine takes per unit of work, for one model shape.

    `linear`: (M, seconds) for every block matrix of every layer at M rows
    (measured: torch's matmul chained over the model's own weights, so that
    small M pays for streaming the weights as a pass does); `unembed`:
    (M, seconds) of (M × d) @ (d × V); `attention`: FLOP/s of the attention
    kernel at the model's head shapes; `elementwise`: seconds per position
    per layer of a block's non-matrix work (norms, rotary, activation, adds);
    `layer_overhead` and `pass_overhead`: seconds per layer per pass and per
    pass (dispatch, Python); `vocab`: seconds per element of each operation
    over float32 vocabulary tensors; `copy`: bytes per second of a tensor copy.
    """

    linear: tuple[tuple[int, float], ...]
    unembed: tuple[tuple[int, float], ...]
    attention: float
    elementwise: float
    layer_overhead: float
    pass_overhead: float
    vocab: dict[str, float]
    copy: float
    source: str = ""

    def pass_seconds(self, shape: ModelShape, p: Pass) -> float:
        m = p.rows * p.tokens
        flops = p.flops(shape)
        one = (
            _interpolate(self.linear, m)
            + flops["attention"] / p.count / self.attention
            + _interpolate(self.unembed, p.unembed)
            + self.elementwise * shape.layers * m
            + self.layer_overhead * shape.layers
            + self.pass_overhead
        )
        return one * p.count

    def part_seconds(self, shape: ModelShape, part: Part) -> float:
        total = sum(self.pass_seconds(shape, p) for p in part.passes)
        total += _interpolate(self.unembed, part.readout)
        total += sum(_interpolate(self.unembed, n) * k / shape.vocab for n, k in part.restricted)
        total += sum(self.vocab[op] * n for op, n in part.vocab_ops.items())
        return total + part.copies / self.copy

    @classmethod
    def gpu(
        cls,
        shape: ModelShape,
        dtype: str = "bfloat16",
        peak_flops: float = 989e12,
        mfu: float = 0.4,
        bandwidth: float = 3.35e12,
        layer_overhead: float = 3e-4,
        name: str = "H100 SXM",
    ) -> Rates:
        """Assumed (not measured) rates of a GPU: matrix work at `mfu` of the dense peak,
        but never faster than streaming the weights once per pass from memory at
        `bandwidth`; vocabulary operations and copies at that bandwidth; a fixed
        `layer_overhead` per layer per pass (eager PyTorch launches a few dozen
        kernels per block)."""
        b = BYTES[dtype]
        rate = mfu * peak_flops
        block = 2 * shape.block_weights
        unembed = 2 * shape.hidden * shape.vocab
        grid = (1, 8, 64, 512, 4096, 32768)
        return cls(
            linear=tuple((m, max(block * m / rate, block / 2 * b / bandwidth)) for m in grid),
            unembed=tuple((m, max(unembed * m / rate, unembed / 2 * b / bandwidth)) for m in grid),
            attention=rate / 2,
            elementwise=20 * shape.hidden * b / bandwidth,
            layer_overhead=layer_overhead,
            pass_overhead=1e-3,
            vocab={op: 8 / bandwidth for op in VOCAB_OPS},
            copy=bandwidth / 2,
            source=f"assumed: {name}, {mfu:.0%} of {peak_flops / 1e12:.0f} TFLOP/s, "
            f"{bandwidth / 1e12:.2f} TB/s",
        )


# The operations over (…, V) tensors the stages make; each is calibrated on its own.
VOCAB_OPS = ("softmax", "topk", "argmax", "compare", "multiply", "reduce", "copy")


# ---------------------------------------------------------------- the stages


def _logits(shape: ModelShape, dtype: str, positions: int, fp32: int) -> int:
    """Bytes of `fp32` float32 tensors of logits at `positions` alive at once.

    The model returns its logits in its dtype; `.float()` copies them (both
    alive during the copy), except in float32, where it is the tensor itself.
    """
    b = BYTES[dtype]
    per = b + 4 if b != 4 else 4
    return positions * shape.vocab * max(per, 4 * fp32)


def _gqa_copy(shape: ModelShape, dtype: str, rows: int, keys: int, device: str) -> int:
    """On CUDA, transformers repeats each key/value head H/KV times before a masked
    SDPA call (its fast kernels take no mask with grouped heads): one layer's worth."""
    if device != "cuda" or shape.kv_heads == shape.heads:
        return 0
    return 2 * rows * shape.heads * keys * shape.head_dim * BYTES[dtype]


def forward_cost(
    shape: ModelShape, task: Task, layout: Layout, batch_size: int, dtype: str, device: str = "cpu"
) -> StageCost:
    """`iclprobe.forward`: one pass per batch of replicates, logits at the answer positions.

    Per batch: right-padded rows of the longest prompt, no KV cache, logits
    at the positions that predict answer tokens (`n · answer` per row), then
    float32, log-sum-exp, top-k and argmax over them.
    """
    part = Part("score")
    length = math.ceil(layout.prompt(task.n_examples))
    kept = round(task.n_examples * layout.answer)
    for first in range(0, task.replicates, batch_size):
        rows = min(batch_size, task.replicates - first)
        # Rows of one batch keep the union of their answer positions (they differ a little).
        unembed = rows * min(length, kept * (1 if rows == 1 else 2))
        part.passes.append(Pass(rows, length, masked=rows > 1, unembed=unembed))
        part.add_ops(unembed * shape.vocab, "copy", "softmax", "topk", "argmax", dtype=dtype)
        # The blocks' activations are freed before the logits are made.
        part.peak({"activations": shape.activation_bytes(rows * length, dtype)})
        part.peak({"logits": _logits(shape, dtype, unembed, 1)})
    return StageCost("forward", shape, dtype, [part])


def lens_cost(
    shape: ModelShape, task: Task, layout: Layout, settings: Settings, dtype: str, device="cpu"
) -> StageCost:
    """`iclprobe.lens` and `.integer_lens`: one pass per replicate, the read-out at every layer.

    Per replicate: one pass up to the last decision position read (its KV
    cache kept for the integer lens); top tokens: the full read-out of L+1
    layers × E positions, softmax, top-k, the answer's rank (a comparison over
    V), the integer-start mass (a product over V). Integer lens: the trie's
    nodes after each of the E contexts as one token tree over a copy of the
    cache, read through the trie's columns only.
    """
    lens = settings.lens
    examples = lens.examples_for(task)
    replicates = set(lens.replicates_for(task))
    integer = set(lens.integer_replicates_for(task)) if lens.integers else set()
    n_read = len(examples)
    length = math.ceil(layout.decision(max(examples))) + 1
    kv = shape.kv_bytes(dtype)
    top, trie = Part("top tokens"), Part("integers")
    for replicate in sorted(replicates | integer):
        ints = replicate in integer
        part = top if replicate in replicates else trie
        part.passes.append(Pass(1, length, unembed=int(ints)))
        cache = length * kv if ints else 0
        part.peak({"activations": shape.activation_bytes(length, dtype), "kv_cache": cache})
        if replicate in replicates:
            rows = (shape.layers + 1) * n_read
            top.readout += rows
            top.add_ops(
                rows * shape.vocab, "copy", "softmax", "topk", "compare", "multiply", dtype=dtype
            )
            top.add_ops(rows * shape.vocab, "reduce", "reduce")
            top.peak(
                {
                    "kv_cache": cache,
                    # probabilities beside the logits they came from, then beside
                    # probs · start (the answer's rank: a bool tensor, freed first)
                    "readout": _logits(shape, dtype, rows, 2),
                }
            )
        if ints:
            nodes = layout.trie_nodes * n_read
            reads = (layout.trie_reads + layout.trie_root_branches) * n_read
            trie.run(Pass(1, nodes, cached=length, masked=True), kv)
            trie.copies += length * kv
            trie.restricted.append(((shape.layers + 1) * reads, layout.trie_columns))
            mask = nodes * (length + nodes) * (BYTES[dtype] + 1)
            trie.peak(
                {
                    "kv_cache": 2 * length * kv + nodes * kv,
                    "activations": shape.activation_bytes(nodes, dtype),
                    "mask": mask + _gqa_copy(shape, dtype, 1, length + nodes, device),
                }
            )
    return StageCost("lens", shape, dtype, [p for p in (top, trie) if p.passes])


def heads_cost(
    shape: ModelShape,
    task: Task,
    layout: Layout,
    settings: Settings,
    dtype: str,
    device="cpu",
    answers: list[int] | None = None,
) -> StageCost:
    """`iclprobe.heads`: attribution passes, then mean-ablation rows over cropped caches.

    Attribution: one pass per replicate up to the last decision position (a
    KV cache kept for ablated replicates, copied and cropped to each ablated
    decision position); the centred unembedding row needs the vocabulary's
    mean row (float32 chunks of the unembedding outside float32). Ablation:
    per (replicate, example), the layers in batches of `batch_rows // H`
    layers × H rows, each row the decision token and the answer tokens after
    it over a copy of the context's cache, logits at every position with a
    float32 log-softmax (the normaliser of each row). `answers`: the answer
    tokens of each ablated (replicate, example) in order, where known (few
    examples are ablated, so the layout's mean can be off by a digit).
    """
    heads = settings.heads
    examples = heads.examples_for(task)
    replicates = heads.replicates_for(task)
    causal_reps = heads.causal_replicates_for(task)
    causal_examples = heads.causal_examples_for(task)
    length = math.ceil(layout.decision(max(examples))) + 1
    kv, b = shape.kv_bytes(dtype), BYTES[dtype]
    attribution, ablation = Part("attribution"), Part("ablation")
    held = 0  # the cropped prefixes every causal replicate keeps until the stage ends
    # The vocabulary's mean row: float32 chunks of the unembedding outside float32.
    unembed_copy = min(shape.vocab, MEAN_CHUNK_ROWS) * shape.hidden * 4 if b != 4 else 0
    for replicate in replicates:
        causal = replicate in causal_reps
        attribution.passes.append(Pass(1, length, unembed=len(causal_examples) if causal else 0))
        if causal:
            attribution.copies += len(causal_examples) * length * kv
            held += sum(math.ceil(layout.decision(e)) * kv for e in causal_examples)
        attribution.add_ops(shape.vocab * shape.hidden, "reduce")  # the mean row
        attribution.copies += unembed_copy
        attribution.peak(
            {
                "activations": shape.activation_bytes(length, dtype),
                "kv_cache": held + (length * kv if causal else 0),
                "unembedding": unembed_copy,
            }
        )
    per_batch = max(1, heads.batch_rows // shape.heads)
    todo = [(r, e) for r in causal_reps for e in causal_examples]
    answers = answers or [round(layout.answer)] * len(todo)
    for (_, example), answer in zip(todo, answers, strict=True):
        suffix = max(answer - layout.lead, 1)
        context = math.ceil(layout.decision(example))
        for first in range(0, shape.layers, per_batch):
            # The layers' heads, and one unedited row: the numerical floor's control.
            rows = min(per_batch, shape.layers - first) * shape.heads + 1
            ablation.run(Pass(rows, suffix, cached=context, masked=True, unembed=rows * suffix), kv)
            ablation.copies += (1 + rows) * context * kv
            ablation.add_ops(rows * suffix * shape.vocab, "copy", "softmax", dtype=dtype)
            ablation.peak(
                {
                    "kv_cache": held + rows * (context + suffix) * kv,
                    "activations": shape.activation_bytes(rows * suffix, dtype)
                    + _gqa_copy(shape, dtype, rows, context + suffix, device),
                    "logits": _logits(shape, dtype, rows * suffix, 2),  # and log-softmax
                }
            )
    return StageCost("heads", shape, dtype, [p for p in (attribution, ablation) if p.passes])


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding steps a stage took (they depend on what the model answers).

    `passes`: (rows, cached positions) of each decoding pass, one new token
    per row. Unknown, a stage is bounded by every row decoding its whole budget.
    """

    passes: tuple[tuple[int, int], ...] = ()


def probe_cost(
    shape: ModelShape,
    task: Task,
    layout: Layout,
    settings: Settings,
    dtype: str,
    device="cpu",
    decoding: Decoding | None = None,
) -> StageCost:
    """`iclprobe.probe`: per (replicate, k) a cached context, then the queries in batches.

    Per context: one pass over the shared prefix (its KV cache kept); per
    batch of `probe.batch_size` queries: the cache copied once per row, the
    rows right-padded to the longest query plus its answer but the last
    token, logits at every position, float32 log-softmax and argmax. Rows
    whose greedy token leaves the forced answer decode on (`decoding`).
    """
    probe = settings.probe
    ks = probe.ks_for(task)
    replicates = probe.replicates_for(task)
    kv = shape.kv_bytes(dtype)
    n_queries = len(task.xs)
    width = layout.query_max - layout.shared_query + layout.answer_max - 1
    forced, decode = Part("forced"), Part("decoding")
    contexts = [(r, k) for r in replicates for k in ks if k > 0 or r == replicates[0]]
    budget = layout.answer_max + 2  # probe.EXTRA_TOKENS beyond the longest answer
    for _, k in contexts:
        prefix = round(layout.bos + k * layout.example + layout.shared_query)
        forced.passes.append(Pass(1, prefix, unembed=1))
        for first in range(0, n_queries, probe.batch_size):
            rows = min(probe.batch_size, n_queries - first)
            forced.run(Pass(rows, width, cached=prefix, masked=True, unembed=rows * width), kv)
            forced.copies += (1 + rows) * prefix * kv
            forced.add_ops(rows * width * shape.vocab, "copy", "softmax", "argmax", dtype=dtype)
            memory = {
                "kv_cache": prefix * kv + rows * (prefix + width) * kv,
                "activations": shape.activation_bytes(rows * width, dtype)
                + _gqa_copy(shape, dtype, rows, prefix + width, device),
                "logits": _logits(shape, dtype, rows * width, 2),
            }
            forced.peak(memory)
            if decoding is None:  # the bound: every row decodes its whole budget
                steps = [(rows, prefix + width + step) for step in range(budget - 1)]
                _decode_rows(decode, shape, steps, kv)
                decode.peak({**memory, "logits": rows * shape.vocab * BYTES[dtype]})
    _decode_rows(decode, shape, decoding.passes if decoding is not None else (), kv)
    return StageCost("probe", shape, dtype, [p for p in (forced, decode) if p.passes])


def _decode_rows(part: Part, shape: ModelShape, steps, kv: int) -> None:
    """Decoding passes of `rows` rows, one new token each, after `cached` positions."""
    for rows, cached in steps:
        part.run(Pass(rows, 1, cached=cached, masked=True, unembed=rows), kv)
        part.add_ops(rows * shape.vocab, "argmax")


def patching_cost(
    shape: ModelShape,
    task: Task,
    layout: Layout,
    target_layout: Layout | None,
    settings: Settings,
    dtype: str,
    device="cpu",
    decoding: Decoding | None = None,
    candidates: float = 3,
) -> StageCost:
    """`iclprobe.patching` / `.patches`: per replicate a source tree and a patched target tree.

    Sources: the shared context run once, each source's query and answer as
    branches of one tree (logits at every node). Targets: the target context
    once, then per pair its query up to the decision position and L + 2
    copies of the decision token (L + 1 patched, one clean), logits at every
    node and kept by the tree. Per pair a fork copies the tree's cache and
    adds every candidate's remaining answer tokens after every copy
    (`candidates`: distinct answers per pair, at most 3: the task's, the
    source's, the target's own if it answers an integer).
    Greedy decoding (the target's own answer, layers whose answer leaves every
    candidate) is `decoding`; unknown, it is bounded by every layer of every
    pair decoding the whole budget.
    The numerical floor's control adds, per replicate, one source over the
    target's own context (the first pair's target query) and one pair to the
    target tree: that target patched with its own activations.
    """
    patching = settings.patching
    replicates = patching.replicates_for(task)
    target = settings.tasks.get(task.patch_target)
    k = patching.examples_for(task, target)
    # The pairs, and the control: the first pair's target patched with its own activations.
    pairs = patching.pairs + 1
    target_layout = layout if target is None else target_layout or layout
    kv, b = shape.kv_bytes(dtype), BYTES[dtype]
    copies = shape.layers + 2
    source_prefix = round(layout.bos + k * layout.example + layout.shared_query)
    target_prefix = round(
        target_layout.bos + (k * target_layout.example if target else 0) + layout.shared_query
    )
    after_query = layout.query - layout.shared_query
    source_nodes = round(patching.pairs * (after_query + layout.answer - 1))
    # The control's source: one query, so the tree's shared prefix runs through the query
    # and only its answer tokens but the last are nodes.
    own_prefix, own_nodes = target_prefix + round(after_query), round(layout.answer - 1)
    chain = max(round(after_query + layout.lead - 1), 0)
    target_nodes = pairs * (chain + copies)
    # Each candidate's tokens after the decision position but the last, after every copy.
    fork_nodes = round(candidates * copies * max(layout.answer - layout.lead - 1, 0))
    # The control's source answer is the task's answer: one candidate fewer.
    control_fork_nodes = round(
        max(candidates - 1, 1) * copies * max(layout.answer - layout.lead - 1, 0)
    )
    # patches.answer_budget: the digits, a sign and the terminator after the decision position.
    budget = layout.answer_max - layout.lead + 1
    sources, targets, forks, decode = (Part(n) for n in ("sources", "targets", "forks", "decoding"))

    def tree_memory(prefix: int, nodes: int, new: int) -> dict[str, int]:
        """A token tree of `nodes` nodes after `prefix` positions, `new` of them being added:
        its cache, every node's float32 logits (kept), and the new nodes' transients."""
        return {
            "kv_cache": (prefix + nodes) * kv,
            "logits": nodes * shape.vocab * 4 + (new * shape.vocab * b if b != 4 else 0),
            "mask": new * (prefix + nodes) * (b + 1),
            "activations": shape.activation_bytes(new, dtype)
            + _gqa_copy(shape, dtype, 1, prefix + nodes, device),
        }

    def fork_memory(prefix: int, size: int, new: int) -> dict[str, int]:
        """The tree, and a fork of it: a copy of its cache and `new` nodes of its own (the
        fork's list of logits shares the tree's tensors)."""
        tree, fork = tree_memory(prefix, size, 0), tree_memory(prefix, size + new, new)
        fork["logits"] -= size * shape.vocab * 4
        return {key: tree[key] + fork[key] for key in tree}

    for _ in replicates:
        sources.run(Pass(1, source_prefix, unembed=1), kv)
        sources.run(
            Pass(1, source_nodes, cached=source_prefix, masked=True, unembed=source_nodes), kv
        )
        sources.add_ops(source_nodes * shape.vocab, "copy", dtype=dtype)
        sources.peak(tree_memory(source_prefix, source_nodes, source_nodes))
        # The control's source: the target's context and the first pair's target query.
        sources.run(Pass(1, own_prefix, unembed=1), kv)
        sources.run(Pass(1, own_nodes, cached=own_prefix, masked=True, unembed=own_nodes), kv)
        sources.add_ops(own_nodes * shape.vocab, "copy", dtype=dtype)
        targets.run(Pass(1, target_prefix, unembed=1), kv)
        targets.run(
            Pass(1, target_nodes, cached=target_prefix, masked=True, unembed=target_nodes), kv
        )
        targets.add_ops(target_nodes * shape.vocab, "copy", "argmax", dtype=dtype)
        targets.peak(tree_memory(target_prefix, target_nodes, target_nodes))
        # The unpatched targets' greedy answers grow the tree before the forks: at most
        # `budget` steps of one node per pair (the bound, for memory).
        size = target_nodes + pairs * budget
        if decoding is None:  # the bound: the default answers, then every layer stuck
            grown = target_nodes
            for rows in [pairs] * budget + [pairs * (shape.layers + 1)] * budget:
                decode.run(
                    Pass(1, rows, cached=target_prefix + grown, masked=True, unembed=rows), kv
                )
                grown += rows
                decode.add_ops(rows * shape.vocab, "copy", "argmax", dtype=dtype)
            decode.peak(tree_memory(target_prefix, grown, pairs * (shape.layers + 1)))
        for pair in range(pairs):
            nodes, read = fork_nodes, candidates
            if pair == pairs - 1:  # the control
                nodes, read = control_fork_nodes, max(candidates - 1, 1)
            forks.run(Pass(1, nodes, cached=target_prefix + size, masked=True, unembed=nodes), kv)
            forks.copies += (target_prefix + size) * kv
            # log-softmax per node read (candidates × copies × tokens), argmax of the greedy walk
            forks.add_ops((nodes + read * copies) * shape.vocab, "copy", "softmax", dtype=dtype)
            forks.peak(fork_memory(target_prefix, size, nodes))
    if decoding is not None and decoding.passes:
        for nodes, cached in decoding.passes:
            decode.run(Pass(1, nodes, cached=cached, masked=True, unembed=nodes), kv)
            decode.add_ops(nodes * shape.vocab, "copy", "argmax", dtype=dtype)
        # Decoded nodes stay in the replicate's tree.
        grown = target_nodes + sum(n for n, _ in decoding.passes) // len(replicates)
        widest = max(n for n, _ in decoding.passes)
        decode.peak(tree_memory(target_prefix, grown, widest))
    parts = [sources, targets, forks, decode]
    return StageCost("patching", shape, dtype, [p for p in parts if p.passes])


def stage_cost(
    stage: str,
    shape: ModelShape,
    settings: Settings,
    task: Task,
    layout: Layout,
    dtype: str,
    device: str = "cpu",
    target_layout: Layout | None = None,
) -> StageCost:
    """One stage's cost for one task (decoding bounded)."""
    if stage == "forward":
        return forward_cost(shape, task, layout, settings.forward.batch_size, dtype, device)
    if stage == "probe":
        return probe_cost(shape, task, layout, settings, dtype, device)
    if stage == "lens":
        return lens_cost(shape, task, layout, settings, dtype, device)
    if stage == "heads":
        return heads_cost(shape, task, layout, settings, dtype, device)
    if stage == "patching":
        return patching_cost(shape, task, layout, target_layout, settings, dtype, device)
    raise ValueError(f"no cost model for stage {stage!r}; stages: {', '.join(STAGES)}")


STAGES = ("forward", "probe", "lens", "heads", "patching")


def stage_enabled(settings: Settings, stage: str) -> bool:
    return stage == "forward" or getattr(settings, stage).enabled


def estimated_layout(settings: Settings, task: Task, numbers: str = "digits", bos: int = 1):
    """A task's layout without a tokenizer (`Layout.estimate`); digit by digit with a BOS
    token is the larger of the two tokenizer styles, so it bounds memory from above.

    The candidates' trie is only built when the integer lens runs on the task: with it
    switched off the default range (0 … 4·max(y)) is unbounded and nothing reads the trie.
    """
    lens = settings.lens
    candidates = lens.candidates_for(task) if lens.integer_replicates_for(task) else range(0)
    return Layout.estimate(task, candidates, numbers=numbers, bos=bos)


# ---------------------------------------------------------------- resources

# A stage job's process before it loads weights: Python, torch, transformers, polars, the
# tokenizer (measured: 420 MB on the project's machine); allowed with room to spare.
HOST_BASELINE = 1.0 * GB
# Loading weights stored in another dtype converts them tensor by tensor: up to 1.5× them.
LOAD_FACTOR = 1.5
# Room left on each GPU beside the model: the CUDA context, the allocator's cache.
GPU_RESERVE = 3 * GB


def gpus_needed(cost: StageCost, gpu_memory: float, reserve: float = GPU_RESERVE) -> int:
    """GPUs to hold the stage's peak (weights, split across them, and its transients)."""
    return max(1, math.ceil(cost.peak / (gpu_memory - reserve)))


def host_memory(cost: StageCost, device: str) -> int:
    """Bytes of host memory a stage's job needs.

    On CPU: the process, the weights as loaded (converted from the stored dtype),
    the stage's transients. On CUDA the weights load straight onto the GPU(s)
    (`models.load_prepared` passes a device map), one checkpoint shard (≤ 5 GB
    as transformers writes them) at a time through the host.
    """
    if device == "cuda":
        return int(HOST_BASELINE + min(cost.weights, 5 * GB))
    return int(HOST_BASELINE + LOAD_FACTOR * cost.weights + cost.transient)


def job_resources(
    stage: str,
    config: dict[str, Any],
    settings: Settings,
    task: Task,
    device: str = "cpu",
    gpu_memory: float = 80 * GB,
) -> dict[str, int]:
    """SLURM resources of one (stage, task) job from the model's config.json: `mem_mb`
    (host memory, 20 % above the model's peak) and `gpu` (0 on CPU)."""
    shape = ModelShape.from_config(config)
    dtype = "bfloat16" if device == "cuda" else "float32"
    if settings.forward.dtype != "auto":
        dtype = settings.forward.dtype
    target = settings.tasks.get(task.patch_target)
    layout = estimated_layout(settings, task)
    target_layout = None if target is None else estimated_layout(settings, target)
    cost = stage_cost(stage, shape, settings, task, layout, dtype, device, target_layout)
    gpus = gpus_needed(cost, gpu_memory) if device == "cuda" else 0
    return {"mem_mb": math.ceil(1.2 * host_memory(cost, device) / 2**20), "gpu": gpus}


def device_map(
    shape: ModelShape, dtype: str, gpus: list[tuple[int, int]], headroom: float = 0.1
) -> dict[str, Any]:
    """Where `from_pretrained` puts a model's weights on GPUs with (free, total) bytes each.

    One GPU when the weights and `headroom` of its memory (the stages' transients, at
    most 4.5 GB for 70B at the default settings, and the CUDA context) fit on the first;
    else the blocks in order over as few GPUs as hold them (transformers' "auto" map
    with a `max_memory` that leaves that headroom on each). The blocks then run in turn:
    a split model is as fast as on one GPU of the same kind, not faster.
    """
    weights = shape.weight_bytes(dtype)
    usable = [int(free - headroom * total) for free, total in gpus]
    if usable and weights <= usable[0]:
        return {"device_map": {"": 0}}
    held = 0
    for n, room in enumerate(usable, start=1):
        held += max(room, 0)
        if held >= weights:
            return {"device_map": "auto", "max_memory": {i: usable[i] for i in range(n)}}
    raise ValueError(
        f"the weights need {weights / GB:.1f} GB but the {len(gpus)} GPU(s) have "
        f"{max(held, 0) / GB:.1f} GB free beside {headroom:.0%} headroom each"
    )


def prepare_memory(config: dict[str, Any]) -> int:
    """Host bytes to prepare a model (`models.prepare_model`): it loads the source in float32
    and writes it, about twice the float32 weights at the peak."""
    return int(HOST_BASELINE + 2 * 4 * ModelShape.from_config(config).parameters)


def model_config(prepared: Path | str, spec: dict[str, Any]) -> dict[str, Any] | None:
    """A model's config.json: the prepared folder's, else a local source's or a cached hub
    id's (no download); None when none is on disk yet (a GGUF file before preparation)."""
    candidates = [Path(prepared) / "config.json"]
    if "path" in spec:
        candidates.append(Path(spec["path"]) / "config.json")
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text())
    if "hf" in spec:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(spec["hf"], "config.json", spec.get("revision"))
        except (ImportError, ValueError):
            return None
        if isinstance(cached, str):
            return json.loads(Path(cached).read_text())
    return None


# ---------------------------------------------------------------- the table


# Reading a checkpoint from a cluster's shared file system, bytes per second (assumed).
READ_BANDWIDTH = 2 * GB


def scale_table(
    shape: ModelShape,
    settings: Settings,
    dtype: str = "bfloat16",
    device: str = "cuda",
    numbers: str = "grouped",
    bos: int = 1,
    gpu_memory: float = 80 * GB,
    rates: Rates | None = None,
    read_bandwidth: float = READ_BANDWIDTH,
) -> list[dict[str, Any]]:
    """Per stage over the config's tasks (one job each): the largest peak and what it holds,
    the GPUs to hold it, compute seconds, loading seconds (every job reads the weights),
    and GPU-hours (job time × GPUs, which all stay allocated while layers run in turn)."""
    rates = rates or Rates.gpu(shape, dtype)
    rows = []
    for stage in STAGES:
        if not stage_enabled(settings, stage):
            continue
        costs = []
        for task in settings.tasks.values():
            target = settings.tasks.get(task.patch_target)
            layout = estimated_layout(settings, task, numbers, bos)
            target_layout = (
                None if target is None else estimated_layout(settings, target, numbers, bos)
            )
            costs.append(
                stage_cost(stage, shape, settings, task, layout, dtype, device, target_layout)
            )
        worst = max(costs, key=lambda c: c.peak)
        gpus = gpus_needed(worst, gpu_memory)
        compute = sum(c.seconds(rates) for c in costs)
        load = len(costs) * worst.weights / read_bandwidth
        part = worst.peak_part()
        held = ", ".join(f"{k} {v / GB:.2f}" for k, v in part.memory.items() if v >= 0.01 * GB)
        rows.append(
            {
                "stage": stage,
                "jobs": len(costs),
                "tokens": sum(c.tokens for c in costs),
                "tflop": sum(sum(c.flops().values()) for c in costs) / 1e12,
                "peak_gb": worst.peak / GB,
                "above_weights": f"{worst.transient / GB:.2f} ({part.name}: {held})",
                "gpus": gpus,
                "compute_s": compute,
                "load_s": load,
                "gpu_hours": (compute + load) * gpus / 3600,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Print the per-stage table for a model shape and a config (docs/cost.md)."""
    import argparse

    import yaml

    from iclprobe.config import load_settings

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--shape", default="llama-3.1-8b", help=f"one of {sorted(SHAPES)} or a folder")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--dtype", default="bfloat16", choices=sorted(BYTES))
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    p.add_argument("--numbers", default="grouped", choices=["digits", "grouped"])
    p.add_argument("--bos", type=int, default=1)
    p.add_argument("--gpu-memory-gb", type=float, default=80)
    p.add_argument("--mfu", type=float, default=0.4)
    args = p.parse_args(argv)
    shape = SHAPES.get(args.shape) or ModelShape.from_folder(args.shape)
    settings = load_settings(yaml.safe_load(Path(args.config).read_text()))
    rates = Rates.gpu(shape, args.dtype, mfu=args.mfu)
    rows = scale_table(
        shape,
        settings,
        args.dtype,
        args.device,
        args.numbers,
        args.bos,
        args.gpu_memory_gb * GB,
        rates,
    )
    print(f"{args.shape}: {shape.parameters / 1e9:.2f} B parameters, {args.dtype}, {rates.source}")
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [
            f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else v
            for v in row.values()
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
