"""Atomic outputs, and Parquet files with provenance metadata read with checks.

`atomic_output` is the one writer of every output (tables, figures, model
folders): it hands out a temporary sibling, renames it into place only once
it is complete, and gives it the mode the user's umask asks for, so a killed
job never leaves a file that looks complete and a group can read the results.

Every table carries an `iclprobe` metadata entry (JSON): the format version,
the package versions, and whatever the stage adds (model id, dtype, template…).
Reads refuse files that are truncated, foreign, or written by another format
version.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import polars as pl

# Bump when a stage's table layout or a convention changes: older caches are then rebuilt.
# 2: the answer span starts at the whitespace before {y} (issue 7).
FORMAT_VERSION = 2
METADATA_KEY = b"iclprobe"
_PACKAGES = ("iclprobe", "torch", "transformers", "tokenizers", "polars", "pyarrow", "numpy")


class StaleCacheError(RuntimeError):
    """A Parquet file is unreadable, truncated, foreign or from another format version."""


def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def _umask() -> int:
    """The process's umask (os.umask can only be read by setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path) -> None:
    """Give `path` (and, for a folder, everything in it) the modes `open`/`mkdir` would.

    Writers inside a folder may make private files too (safetensors writes the
    weights 0600 through a temporary file), so the whole tree is set. Execute
    bits a writer set deliberately are kept, within the umask.
    """
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        if item.is_symlink():
            continue
        if item.is_dir():
            item.chmod(0o777 & ~mask)
        else:
            item.chmod((0o666 | (item.stat().st_mode & 0o111)) & ~mask)


@contextmanager
def atomic_output(path: Path | str, *, directory: bool = False, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success rename it onto `path`.

    The temporary file or folder is made private by `tempfile`; before the rename
    it (and everything in a folder) gets the mode a plain `open()` or `mkdir()`
    would have given it under the current umask. On any error it is removed and `path` is left as it was. A
    `suffix` keeps the extension that writers such as matplotlib look at.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _honour_umask(tmp)
        if not directory:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        elif path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_table(df: pl.DataFrame, path: Path | str, metadata: dict[str, Any] | None = None) -> None:
    """Write `df` to `path` atomically, with provenance metadata."""
    meta = {"format_version": FORMAT_VERSION, "versions": package_versions(), **(metadata or {})}
    table = df.to_arrow()
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def read_metadata(path: Path | str) -> dict[str, Any]:
    """The iclprobe metadata of a file; StaleCacheError if it is not a valid current file."""
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise StaleCacheError(f"{path}: not a readable Parquet file ({err})") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise StaleCacheError(f"{path}: has no iclprobe metadata (not written by iclprobe)")
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise StaleCacheError(
            f"{path}: written in format version {meta.get('format_version')}, this iclprobe "
            f"reads version {FORMAT_VERSION}; delete it and rerun to rebuild"
        )
    return meta


def read_table(path: Path | str) -> pl.DataFrame:
    """Read a table written by `write_table`, refusing stale or damaged files."""
    import polars as pl  # not at module level: the Snakefile imports this module

    read_metadata(path)
    try:
        return pl.from_arrow(pq.read_table(path))
    except (OSError, pa.ArrowInvalid) as err:
        raise StaleCacheError(f"{path}: damaged Parquet file ({err})") from None


def concat_tables(paths: list[Path | str]) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Tables of one (model, task) each, stacked, with each one's provenance kept.

    The metadata holds every part's own metadata (model, task, scoring, the
    versions that wrote it) under `inputs[model][task]`, so a combined table
    says where each of its rows came from.
    """
    import polars as pl

    frames, inputs = [], {}
    for path in paths:
        frame, meta = read_table(path), read_metadata(path)
        pairs = frame.select("model", "task").unique().rows()
        if len(pairs) != 1:
            raise ValueError(f"{path}: expected one (model, task), found {sorted(pairs)}")
        (model, task), part = pairs[0], dict(meta)
        part.pop("format_version", None)
        inputs.setdefault(model, {})[task] = part
        frames.append(frame)
    return pl.concat(frames, how="vertical_relaxed"), {"inputs": inputs}


def is_valid(path: Path | str) -> bool:
    """True when `path` is a complete table of the current format (reads it fully)."""
    try:
        read_table(path)
    except StaleCacheError:
        return False
    return True


def set_aside_stale(root: Path | str) -> list[tuple[Path, str]]:
    """Rename unreadable or outdated tables under `root` to `*.stale` so they are rebuilt.

    Only the Parquet footer is read (cheap); a file cut short has lost its footer.
    Returns (new path, reason) for each file set aside. A dry run sets files
    aside too: they are unusable either way, and the plan it shows is then true.
    """
    moved = []
    for path in sorted(Path(root).rglob("*.parquet")):
        try:
            read_metadata(path)
        except StaleCacheError as err:
            stale = path.with_name(path.name + ".stale")
            os.replace(path, stale)
            moved.append((stale, str(err)))
    return moved
