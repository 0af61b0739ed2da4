"""Model sources without torch: the digest that reruns preparation when weights change."""

from __future__ import annotations

import json
import os

import pytest

from conftest import SMOLLM2, digit_tokenizer, tiny_llama
from iclprobe import sources
from iclprobe.sources import SOURCE_FILE, ModelError, current_digest, source_digest


def _folder(tmp_path, seed=0):
    folder = tmp_path / "model"
    tokenizer = digit_tokenizer()
    tiny_llama(len(tokenizer), seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_new_weights_of_the_same_size_change_the_digest(tmp_path):
    folder = _folder(tmp_path)
    spec = {"path": str(folder)}
    before = source_digest(spec)
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    tiny_llama(len(digit_tokenizer()), seed=1).save_pretrained(folder)
    assert weights.stat().st_size == size
    assert source_digest(spec) != before


def test_digest_ignores_touching_and_hidden_files_but_not_renames(tmp_path):
    folder = _folder(tmp_path)
    spec = {"path": str(folder)}
    before = source_digest(spec)
    os.utime(folder / "model.safetensors", ns=(1, 1))
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    assert source_digest(spec) == before
    (folder / "config.json").rename(folder / "config.json.orig")
    assert source_digest(spec) != before


def test_file_hashes_are_cached_until_the_file_changes(tmp_path, monkeypatch):
    folder = _folder(tmp_path)
    spec, cache = {"path": str(folder)}, tmp_path / "cache" / "digests.json"
    hashed = []
    real = sources.sha256
    monkeypatch.setattr(sources, "sha256", lambda path: hashed.append(path.name) or real(path))
    first = source_digest(spec, cache)
    assert "model.safetensors" in hashed and cache.is_file()
    hashed.clear()
    assert source_digest(spec, cache) == first
    assert hashed == []
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert source_digest(spec, cache) != first
    assert hashed == ["config.json"]


def test_unreadable_cache_is_ignored(tmp_path):
    folder = _folder(tmp_path)
    cache = tmp_path / "digests.json"
    cache.write_text("{not json")
    assert source_digest({"path": str(folder)}, cache) == source_digest({"path": str(folder)})


def test_gguf_is_digested_and_hub_ids_are_not():
    assert len(source_digest(SMOLLM2)) == 16
    assert source_digest({"hf": "org/model"}) is None


def test_a_prepared_model_keeps_its_recorded_digest_when_the_source_is_gone(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / SOURCE_FILE).write_text(json.dumps({"source_digest": "0123456789abcdef"}))
    gone = {"path": str(tmp_path / "gone")}
    assert current_digest(gone, prepared) == "0123456789abcdef"
    with pytest.raises(ModelError, match="does not exist"):
        current_digest(gone, tmp_path / "not-prepared")
