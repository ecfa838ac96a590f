"""The WeightStore notices a model file replaced on disk (size, mtime, inode) and drops what it
held for it: the file's tensors and everything derived from them (converted weights, LoRA pairs),
so the next use reads the new file instead of serving the old weights from memory."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from diffmesh.models.load import WeightStore


def _write(path: Path, value: float, size: int = 4) -> None:
    """Write through a temporary name and rename, as a download or copy tool replaces a file."""
    tmp = path.with_suffix(".tmp")
    save_file({"w": torch.full((size,), value)}, str(tmp))
    os.replace(tmp, path)


def test_a_replaced_file_is_read_again(tmp_path):
    path = tmp_path / "lora.safetensors"
    _write(path, 1.0)
    store = WeightStore()
    assert store.state_dict(path)["w"][0].item() == 1.0
    assert store.state_dict(path)["w"][0].item() == 1.0 and store.reads[str(path.resolve())] == 1
    _write(path, 2.0)
    assert store.state_dict(path)["w"][0].item() == 2.0
    assert store.reads[str(path.resolve())] == 2


def test_what_was_derived_from_a_replaced_file_is_made_again(tmp_path):
    path = tmp_path / "model.safetensors"
    _write(path, 1.0)
    store = WeightStore()
    key = (str(path.resolve()), "lora-pairs")

    def make():
        return store.state_dict(path)["w"].sum().item()

    assert store.derived(key, make) == 4.0
    _write(path, 3.0, size=8)
    assert store.derived(key, make) == 24.0


def test_an_unchanged_file_is_read_once_and_a_touched_one_again(tmp_path):
    path = tmp_path / "same.safetensors"
    _write(path, 1.0)
    store = WeightStore()
    first = store.state_dict(path)
    assert store.state_dict(path) is first and store.reads[str(path.resolve())] == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))   # rewritten in place, same size
    assert store.state_dict(path) is not first and store.reads[str(path.resolve())] == 2
