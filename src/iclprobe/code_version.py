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
import functools
import hashlib
import importlib.util
from pathlib import Path


def imported_modules(source: str, package: str) -> set[str]:
    """Modules of `package` that `source` imports by absolute name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import mod` names a module; `from pkg.mod import f` names pkg.mod.
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if (name == package or name.startswith(package + ".")) and _source_file(name):
                found.add(name)
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


def reached_modules(script: Path | str, package: str = "iclprobe") -> dict[str, str]:
    """Module name -> source, for every `package` module `script` reaches through imports."""
    pending = set(_imports(Path(script).read_text(), package))
    sources: dict[str, str] = {}
    while pending:
        module = pending.pop()
        sources[module] = _source_file(module).read_text()
        pending |= _imports(sources[module], package) - sources.keys()
    return sources


# The Snakefile asks for one digest per rule, and the rules' scripts share most
# modules: each source is parsed once per process, not once per rule.
@functools.lru_cache(maxsize=512)
def _imports(source: str, package: str) -> frozenset[str]:
    return frozenset(imported_modules(source, package))


@functools.lru_cache(maxsize=512)
def _layout_free(source: str) -> str:
    """The module's syntax tree as text: comments and formatting gone."""
    return ast.dump(ast.parse(source))


def code_version(script: Path | str, package: str = "iclprobe") -> str:
    """Digest of every `package` module `script` reaches, comments and layout aside."""
    digest = hashlib.sha256()
    for module, source in sorted(reached_modules(script, package).items()):
        digest.update(f"{module}\n{_layout_free(source)}\n".encode())
    return digest.hexdigest()[:16]
