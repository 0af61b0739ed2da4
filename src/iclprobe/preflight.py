"""Checks of every (model, task) before any job, from the prepared model's files alone.

Once a model is prepared, `resources/models/{model}/` holds its tokenizer
(`tokenizer.json`) and its config (`config.json`). That is enough to find,
in the terminal and before a single job runs, what would otherwise stop a
forward job minutes later inside its log: a prompt longer than the model's
context window, an answer span that does not start on a token boundary
(`tokens.check_boundary`), a `top_k` larger than the vocabulary.

The Snakefile runs this at every parse, so it imports neither torch nor
transformers: the `tokenizers` package reads `tokenizer.json` directly (0.02 s
to import), and `RawTokenizer` gives it the calls `iclprobe.tokens` makes.
A model that is not prepared yet is checked by its forward job instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iclprobe.io import atomic_output
from iclprobe.sources import context_window
from iclprobe.tokens import TokenizationError, check_boundary

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
    """Tokens in the task's longest prompt, as the forward stage tokenizes it."""
    # Imported here: prompts imports polars, which a no-op rerun (checks passed) never needs.
    from iclprobe.prompts import draw_examples, render

    texts = (render(task, *draw_examples(task, r))[0] for r in range(1, task.replicates + 1))
    return max(len(tokenizer(text)["input_ids"]) for text in texts)


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


def check_prepared(
    settings: Settings, models_root: Path | str, passed: Path | str | None = None
) -> list[str]:
    """Check every task against every model already prepared under `models_root`.

    Returns the names of the models checked; raises PreflightError on the first
    problem. With `passed` (a folder), a model whose checks passed is recorded
    there under a digest of everything they read (its tokenizer and config
    files, the settings, this code) and not checked again until one changes:
    loading a 3.5 MB tokenizer.json is most of the cost of a no-op rerun's check.
    """
    checked = []
    for model in sorted(settings.models):
        folder = Path(models_root) / model
        files = [folder / "tokenizer.json", folder / "config.json"]
        if not all(f.is_file() for f in files):
            continue
        stamp = None if passed is None else Path(passed) / _inputs_digest(settings, files)
        if stamp is None or not stamp.is_file():
            config = json.loads(files[1].read_text())
            check_vocabulary(settings, model, config)
            tokenizer = RawTokenizer.from_folder(folder)
            for task in settings.tasks.values():
                check_pair(task, model, tokenizer, context_window(config))
            if stamp is not None:
                _record(stamp)
        checked.append(model)
    return checked


# Modules whose code decides the checks' outcome.
_CHECK_CODE = ("preflight", "tokens", "prompts", "config", "expr", "sources")


def _inputs_digest(settings: Settings, files: list[Path]) -> str:
    package = Path(__file__).parent
    inputs = {
        "files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "tasks": [task.as_params() for _, task in sorted(settings.tasks.items())],
        "top_k": [settings.forward.top_k, settings.lens.top_k],
        "code": [(package / f"{m}.py").read_text() for m in _CHECK_CODE],
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


def _record(stamp: Path) -> None:
    try:
        with atomic_output(stamp) as tmp:
            tmp.write_text("passed\n")
    except OSError:
        pass  # a read-only project folder: check again next time
