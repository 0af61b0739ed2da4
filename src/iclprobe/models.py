"""Model preparation (hub id, local folder or packaged GGUF → local HF folder) and loading.

Preparation runs once per model: a GGUF file takes ~30 s to dequantise, a
saved safetensors folder reloads in under a second, so every later job loads
`resources/models/{model}/`. The folder also holds `iclprobe_source.json`,
the provenance that every table downstream copies into its metadata. Checks
of a source that need no torch (the Snakefile runs them) are in
`iclprobe.sources`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from iclprobe.cost import ModelShape, device_map
from iclprobe.io import atomic_output
from iclprobe.sources import (  # checks without torch
    OFFLINE_ADVICE,
    SOURCE_FILE,
    WINDOW_KEYS,
    ModelError,
    check_hub,
    check_source,
    describe,
    sha256,
    source_digest,
)

log = logging.getLogger(__name__)


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
    # The prepare_model rule's `source` param: new weights rerun preparation.
    source["source_digest"] = source_digest(spec)
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
    if dev.type == "cuda":
        # Straight onto the GPU(s), no host copy; a model larger than one GPU is split by
        # blocks over as many as it needs (iclprobe.cost.device_map).
        gpus = [torch.cuda.mem_get_info(i) for i in range(torch.cuda.device_count())]
        dtype_name = str(torch_dtype).removeprefix("torch.")
        placement = device_map(ModelShape.from_folder(folder), dtype_name, gpus)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **placement)
        model.eval()
    else:
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
    for key in WINDOW_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int):
            return value
    return None
