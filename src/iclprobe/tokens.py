"""Tokenisation every stage shares: answer tokens from character offsets, the
scoring boundary, and the decision position.

The scoring convention (DESIGN.md, "Answer span"): the scored span of an answer
starts at the scoring boundary, the whitespace that precedes {y} in the
template, and runs through the digits of y and the terminator. Its
log-probability is the sum over every token whose character span meets it.
This needs the boundary to fall between two tokens: a token that straddles it
(`,-` in a template `({x},{y})`) would be half context, half answer.

The decision position of an answer is the position whose *next* token is the
first token holding a character of y: the position after the space token for
SmolLM2 and a positive y, the position before `␠-` for a negative one. The
lens, head attribution and patching look there.

No torch here: the Snakefile's parse-time checks import this module.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from iclprobe.config import Task


class TokenizationError(ValueError):
    """The prompt text cannot be scored with this tokenizer."""


@dataclass(frozen=True)
class AnswerSpan:
    """Character offsets of one answer in a text: boundary ≤ y_start < y_end ≤ end."""

    boundary: int
    y_start: int
    y_end: int
    end: int


@dataclass
class EncodedSequence:
    """A tokenized text and, per answer span, where its tokens are.

    `answer_tokens[i]` are the indices of the tokens that meet answer i's span
    (the first one starts exactly at the boundary); `decision[i]` is answer i's
    decision position (the index of the token before its first token holding
    a character of y).
    """

    input_ids: list[int]
    offsets: list[tuple[int, int]]
    answer_tokens: list[list[int]]
    decision: list[int]


def tokens_meeting(offsets: list[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of tokens whose character span [a, b) meets [start, end).

    Zero-width tokens (BOS and other specials have offsets (0, 0)) meet nothing.
    """
    return [t for t, (a, b) in enumerate(offsets) if a < b and a < end and b > start]


def straddling_token(offsets: list[tuple[int, int]], boundary: int) -> int | None:
    """The index of a token that starts before `boundary` and ends after it, if any."""
    for t, (a, b) in enumerate(offsets):
        if a < boundary < b:
            return t
    return None


def tokenize(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets, with the tokenizer's special tokens (BOS)."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def locate_answer(
    tokenizer, ids: list[int], offsets: list[tuple[int, int]], text: str, span: AnswerSpan
) -> tuple[list[int], int]:
    """(indices of the tokens meeting the span, decision position) of one answer."""
    straddler = straddling_token(offsets, span.boundary)
    if straddler is not None:
        a, b = offsets[straddler]
        raise TokenizationError(
            f"token {text[a:b]!r} straddles the start of the answer span at character "
            f"{span.boundary} of {text[max(0, a - 20) : b + 20]!r}: part context, part answer"
        )
    toks = tokens_meeting(offsets, span.boundary, span.end)
    if not toks:
        raise TokenizationError(f"no token covers characters {span.boundary}:{span.end}")
    if toks[0] == 0:
        raise TokenizationError(
            f"the answer at characters {span.boundary}:{span.end} starts the sequence; "
            "it has no context"
        )
    first_y = tokens_meeting(offsets, span.y_start, span.y_end)[0]
    return toks, first_y - 1


def encode(tokenizer, text: str, spans: list[AnswerSpan]) -> EncodedSequence:
    """Tokenize one text and locate each answer span's tokens and decision position."""
    ids, offsets = tokenize(tokenizer, text)
    decoded = tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if decoded != text:
        raise TokenizationError(
            f"tokenizer {type(tokenizer).__name__} does not round-trip the prompt: "
            f"{text[:60]!r}… decodes as {decoded[:60]!r}…; its answer tokens cannot be located"
        )
    answer_tokens, decision = [], []
    for span in spans:
        toks, position = locate_answer(tokenizer, ids, offsets, text, span)
        answer_tokens.append(toks)
        decision.append(position)
    return EncodedSequence(ids, offsets, answer_tokens, decision)


def boundary_probes(task: Task) -> list[int]:
    """Candidate answers worth tokenizing: the smallest, the largest, one of each sign.

    The candidates are sorted (a lazy range for an answer_range): found by
    bisection, never by walking them.
    """
    candidates = task.candidates()
    picks = {candidates[0], candidates[-1]}
    first_nonnegative = bisect_left(candidates, 0)
    if first_nonnegative < len(candidates):
        picks.add(candidates[first_nonnegative])
    return sorted(picks)


def check_boundary(tokenizer, task: Task, model: str = "") -> None:
    """Refuse a task whose answers do not start on a token boundary with this tokenizer.

    Tokenizes a two-example text ending in each of `boundary_probes(task)` and
    checks that no token straddles the scoring boundary. The message names the
    task, the template, the straddling token and a fix.
    """
    for y in boundary_probes(task):
        context = task.example_text(task.x_low, y) + task.query_text(task.x_high)
        answer, y_start, end = task.continuation(y)
        text = context + answer
        boundary = len(context)
        y_at = boundary + y_start
        span = AnswerSpan(boundary, y_at, y_at + len(str(y)), boundary + end)
        ids, offsets = tokenize(tokenizer, text)
        straddler = straddling_token(offsets, boundary)
        if straddler is not None:
            a, b = offsets[straddler]
            by = f" of model {model!r}" if model else ""
            raise TokenizationError(
                f"task {task.name!r}: with template {task.template!r} and separator "
                f"{task.separator!r}, the tokenizer{by} writes {text[a:b]!r} as one token "
                f"across the start of the answer {y} (in {text[max(0, a - 8) : b + 8]!r}), so the "
                "answer cannot be scored on its own; put a space before {y} in the template, "
                "e.g. '({x}, {y})'"
            )
        locate_answer(tokenizer, ids, offsets, text, span)


@dataclass(frozen=True)
class AnswerTokens:
    """A context followed by one answer, tokenized: where the answer's tokens are.

    `ids` covers the context, the answer and the start of the next example (so
    the terminator tokenizes as in a prompt); `span` are the indices of the
    tokens that meet the answer's span (the first starts at the scoring
    boundary); `decision` is the decision position.
    """

    ids: list[int]
    span: list[int]
    decision: int

    @property
    def boundary(self) -> int:
        """Index of the first scored token; ids[:boundary] is the context."""
        return self.span[0]

    @property
    def answer_ids(self) -> list[int]:
        return [self.ids[t] for t in self.span]


def encode_answer(tokenizer, context: str, task: Task, y: int) -> AnswerTokens:
    """Tokens of `context` (text up to the scoring boundary) followed by answer `y`.

    Build `context` as `task.context_text(xs, ys) + task.query_text(x)`. The
    whole text is tokenized at once, as the forward stage tokenizes a prompt.
    """
    answer, y_start, end = task.continuation(y)
    b = len(context)
    span = AnswerSpan(b, b + y_start, b + y_start + len(str(y)), b + end)
    seq = encode(tokenizer, context + answer, [span])
    return AnswerTokens(seq.input_ids, seq.answer_tokens[0], seq.decision[0])
