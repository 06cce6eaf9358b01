"""Atomic files: a failed write never destroys the previous file."""

import pytest
import torch

from vitkit.io import atomic_path, load_safetensors, read_json, save_safetensors, write_json


def test_atomic_path_keeps_old_file_when_the_write_fails(tmp_path):
    target = tmp_path / "state.json"
    write_json({"epoch": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind


def test_safetensors_round_trip_and_errors(tmp_path):
    weights = {"a": torch.arange(6.0).reshape(2, 3).T, "b": torch.ones(2)}  # a is not contiguous
    save_safetensors(weights, tmp_path / "w.safetensors")
    loaded = load_safetensors(tmp_path / "w.safetensors")
    assert torch.equal(loaded["a"], weights["a"]) and torch.equal(loaded["b"], weights["b"])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_safetensors(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ValueError, match="bad.safetensors is not a readable safetensors"):
        load_safetensors(tmp_path / "bad.safetensors")


def test_read_json_names_the_file(tmp_path):
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="c.json is not valid JSON"):
        read_json(tmp_path / "c.json")


def test_atomic_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json({}, tmp_path / "a.json")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
