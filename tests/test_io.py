"""The one atomic writer honours the umask; combined tables keep each part's provenance."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import matplotlib.pyplot as plt
import polars as pl
import pytest

from iclprobe.io import atomic_output, concat_tables, read_metadata, write_table
from iclprobe.models import prepare_model
from iclprobe.plots import style


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o007, 0o660, 0o770)]
)
def test_tables_figures_and_model_folders_honour_the_umask(
    tmp_path, tiny_llama_folder, mask, file_mode, dir_mode
):
    with umask(mask):
        write_table(pl.DataFrame({"a": [1]}), tmp_path / "t.parquet")
        fig = plt.figure()
        style.save(fig, tmp_path / "f.png")
        prepare_model({"path": str(tiny_llama_folder)}, tmp_path / "model")
        with atomic_output(tmp_path / "d", directory=True) as tmp:
            (tmp / "inner.txt").write_text("x")
    assert _mode(tmp_path / "t.parquet") == file_mode
    assert _mode(tmp_path / "f.png") == file_mode
    assert _mode(tmp_path / "d") == dir_mode
    assert _mode(tmp_path / "model") == dir_mode
    # Every file of the prepared model, whoever wrote it (safetensors, the tokenizer).
    for path in (tmp_path / "model").iterdir():
        assert _mode(path) == file_mode, path.name


def _part(tmp_path, model, task, value):
    path = tmp_path / f"{model}-{task}.parquet"
    frame = pl.DataFrame({"model": [model], "task": [task], "value": [value]})
    write_table(frame, path, {"model": {"id": f"id-{model}"}, "task": {"name": task}})
    return path


def test_combined_tables_keep_each_parts_provenance(tmp_path):
    paths = [
        _part(tmp_path, m, t, i) for i, (m, t) in enumerate([("a", "x"), ("a", "y"), ("b", "x")])
    ]
    combined, meta = concat_tables(paths)
    assert combined["value"].to_list() == [0, 1, 2]
    write_table(combined, tmp_path / "all.parquet", meta)
    inputs = read_metadata(tmp_path / "all.parquet")["inputs"]
    assert inputs["a"]["y"]["task"] == {"name": "y"}
    assert inputs["b"]["x"]["model"] == {"id": "id-b"}
    assert "versions" in inputs["b"]["x"] and "format_version" not in inputs["b"]["x"]


def test_a_part_holding_several_tasks_is_refused(tmp_path):
    path = tmp_path / "mixed.parquet"
    write_table(pl.DataFrame({"model": ["a", "a"], "task": ["x", "y"]}), path)
    with pytest.raises(ValueError, match=r"expected one \(model, task\)"):
        concat_tables([path])
