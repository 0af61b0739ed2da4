"""Checks of every (model, task) before any job, from the prepared model's files alone.

Once a model is prepared, `resources/models/{model}/` holds its tokenizer
(`tokenizer.json`) and its config (`config.json`). That is enough to find,
in the terminal and before a single job runs, what would otherwise stop a
forward job minutes later inside its log: a prompt longer than the model's
context window, an answer span that does not start on a token boundary
(`tokens.check_boundary`), a tokenizer that cannot round-trip the prompts, a
`top_k` larger than the vocabulary.

The Snakefile runs this at every parse, so it imports neither torch nor
transformers: the `tokenizers` package reads `tokenizer.json` directly (0.02 s
to import), and `RawTokenizer` gives it the calls `iclprobe.tokens` makes.
A model that is not prepared yet is checked by its forward job instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclprobe.prompts import make_prompts
from iclprobe.sources import context_window
from iclprobe.tokens import AnswerSpan, TokenizationError, check_boundary, encode

if TYPE_CHECKING:
    from iclprobe.config import Settings, Task


class PreflightError(ValueError):
    """A (model, task) pair would fail in a job; the message names both."""


class RawTokenizer:
    """A `tokenizers.Tokenizer` answering the calls `iclprobe.tokens` makes of an HF one.

    A prepared folder's `tokenizer.json` is what transformers' fast tokenizer
    wraps, special-token post-processing (BOS) included, so both give the same
    ids and character offsets.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    @classmethod
    def from_folder(cls, folder: Path | str) -> RawTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(Path(folder) / "tokenizer.json")))

    def __call__(self, text: str, return_offsets_mapping=False, add_special_tokens=True):
        enc = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        out: dict[str, Any] = {"input_ids": enc.ids}
        if return_offsets_mapping:
            out["offset_mapping"] = enc.offsets
        return out

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) -> str:
        # clean_up_tokenization_spaces is a transformers post-processing step; the
        # callers here always turn it off, which is what the raw decoder does.
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)


def longest_prompt(task: Task, tokenizer) -> int:
    """Tokens in the task's longest prompt; encodes every replicate as the forward stage does."""
    prompts = make_prompts(task)
    per_rep = prompts.sort("replicate", "example").partition_by("replicate", maintain_order=True)
    longest = 0
    for rows in per_rep:
        spans = [
            AnswerSpan(*span)
            for span in rows.select("answer_start", "y_start", "y_end", "answer_end").iter_rows()
        ]
        seq = encode(tokenizer, rows["text"][0], spans)
        longest = max(longest, len(seq.input_ids))
    return longest


def check_pair(task: Task, model: str, tokenizer, window: int | None) -> int:
    """Raise PreflightError if `task` cannot be scored by `model`; return the longest prompt."""
    try:
        check_boundary(tokenizer, task, model)
        longest = longest_prompt(task, tokenizer)
    except TokenizationError as err:
        where = f"task {task.name!r}, model {model!r}: "
        raise PreflightError(
            str(err) if str(err).startswith("task ") else where + str(err)
        ) from None
    if window is not None and longest > window:
        raise PreflightError(
            f"task {task.name!r}: the longest prompt is {longest} tokens but model {model!r} "
            f"has a context window of {window}; lower tasks.{task.name}.n_examples or shorten "
            "the template"
        )
    return longest


def check_vocabulary(settings: Settings, model: str, config: dict[str, Any]) -> None:
    """top_k settings that ask for more tokens than the model's vocabulary has."""
    vocab = config.get("vocab_size")
    if not isinstance(vocab, int):
        return
    for key, value in (
        ("forward.top_k", settings.forward.top_k),
        ("lens.top_k", settings.lens.top_k),
    ):
        if value > vocab:
            raise PreflightError(
                f"{key}: {value} is more than the {vocab} tokens of model {model!r}'s vocabulary"
            )


def check_prepared(settings: Settings, models_root: Path | str) -> list[str]:
    """Check every task against every model already prepared under `models_root`.

    Returns the names of the models checked; raises PreflightError on the first problem.
    """
    checked = []
    for model in sorted(settings.models):
        folder = Path(models_root) / model
        if not (folder / "tokenizer.json").is_file() or not (folder / "config.json").is_file():
            continue
        config = json.loads((folder / "config.json").read_text())
        check_vocabulary(settings, model, config)
        tokenizer = RawTokenizer.from_folder(folder)
        for task in settings.tasks.values():
            check_pair(task, model, tokenizer, context_window(config))
        checked.append(model)
    return checked
