"""A digest of the library code a workflow script runs, so code changes rerun its jobs.

Snakemake reruns a job when its script changes, but not when a module the
script imports from this package changes: a fixed bug in `scoring.py` would
leave every cached table silently stale. Rules pass this digest as a param,
and a changed param reruns the job. It covers the modules the script reaches
through imports of this package, and it hashes their syntax tree, so editing
comments or formatting reruns nothing.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any


def imported_modules(source: str, package: str) -> set[str]:
    """Modules of `package` that `source` imports by absolute name."""
    return {name for name in _import_names(ast.parse(source), package) if _source_file(name)}


def _import_names(tree: ast.AST, package: str) -> set[str]:
    """Names under `package` that a module imports: modules, or attributes of them."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import mod` names a module; `from pkg.mod import f` names pkg.mod.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found.update(n for n in names if n == package or n.startswith(package + "."))
    return found


def _source_file(module: str) -> Path | None:
    """The file of `module`, found by path: importing it (seaborn, torch) is not needed."""
    package, *parts = module.split(".")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    base = Path(next(iter(spec.submodule_search_locations)), *parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _facts(source: str, package: str, cache: dict[str, Any]) -> list:
    """[digest of the syntax tree, names under `package` it imports] of one source.

    Keyed by the source text itself, so a cached entry can never be stale; the
    Snakefile asks for one digest per rule, and parsing is most of the cost.
    """
    key = hashlib.sha256(f"{package}\0{source}".encode()).hexdigest()
    if key not in cache:
        tree = ast.parse(source)
        layout_free = hashlib.sha256(ast.dump(tree).encode()).hexdigest()
        cache[key] = [layout_free, sorted(_import_names(tree, package))]
    return cache[key]


def reached_modules(
    script: Path | str, package: str = "iclprobe", cache: dict[str, Any] | None = None
) -> dict[str, str]:
    """Module name -> source, for every `package` module `script` reaches through imports."""
    cache = {} if cache is None else cache

    def imports(source: str) -> set[str]:
        return {name for name in _facts(source, package, cache)[1] if _source_file(name)}

    pending = imports(Path(script).read_text())
    sources: dict[str, str] = {}
    while pending:
        module = pending.pop()
        sources[module] = _source_file(module).read_text()
        pending |= imports(sources[module]) - sources.keys()
    return sources


# Facts per source text, shared by every call in this process, and kept on disk
# between processes when the caller names a cache file (whose keys are noted here).
_MEMORY: dict[str, Any] = {}
_ON_DISK: dict[Path, set[str]] = {}


def code_version(
    script: Path | str, package: str = "iclprobe", cache_file: Path | str | None = None
) -> str:
    """Digest of every `package` module `script` reaches, comments and layout aside."""
    cache = None if cache_file is None else Path(cache_file)
    if cache is not None and cache not in _ON_DISK:
        try:
            stored = json.loads(cache.read_text())
        except (OSError, ValueError):
            stored = {}
        _MEMORY.update(stored)
        _ON_DISK[cache] = set(stored)
    digest = hashlib.sha256()
    for module, source in sorted(reached_modules(script, package, _MEMORY).items()):
        digest.update(f"{module}\n{_facts(source, package, _MEMORY)[0]}\n".encode())
    if cache is not None and _MEMORY.keys() - _ON_DISK[cache]:
        _save(cache)
    return digest.hexdigest()[:16]


def _save(path: Path) -> None:
    from iclprobe.io import atomic_output  # io imports polars; needed only on a miss

    try:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(_MEMORY))
        _ON_DISK[path] = set(_MEMORY)
    except OSError:
        pass  # a read-only project folder: parse again next time
