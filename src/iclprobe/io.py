"""Parquet files with provenance metadata, written atomically and read with checks.

Every table carries an `iclprobe` metadata entry (JSON): the format version,
the package versions, and whatever the stage adds (model id, dtype, template…).
Writes go to a temporary file in the same folder and are renamed into place,
so a killed job never leaves a file that looks complete. Reads refuse files
that are truncated, foreign, or written by another format version.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

# Bump when a stage's table layout changes: older caches are then rebuilt.
FORMAT_VERSION = 1
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


def atomic_path(path: Path | str):
    """A temporary sibling of `path`; rename it onto `path` once fully written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_table(df: pl.DataFrame, path: Path | str, metadata: dict[str, Any] | None = None) -> None:
    """Write `df` to `path` atomically, with provenance metadata."""
    meta = {"format_version": FORMAT_VERSION, "versions": package_versions(), **(metadata or {})}
    table = df.to_arrow()
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
    tmp = atomic_path(path)
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    read_metadata(path)
    try:
        return pl.from_arrow(pq.read_table(path))
    except (OSError, pa.ArrowInvalid) as err:
        raise StaleCacheError(f"{path}: damaged Parquet file ({err})") from None


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
