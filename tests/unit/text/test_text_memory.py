"""Every VRAM mode gives the highvram conditioning for the text encoders (CPU device with an imposed
budget): the memory manager streams T5 / Qwen blocks like any component's."""

from __future__ import annotations

import pytest
import torch

from diffmesh.devices.memory import MemoryManager
from diffmesh.models import testspecs as ts
from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import WeightStore, build_component
from diffmesh.models.text.testfiles import t5_spec

MODES = ("normalvram", "lowvram", "novram")


@pytest.fixture(scope="module")
def wide_t5(tmp_path_factory):
    """A T5 whose blocks outweigh its embedding (small vocabulary: the test prompt's ids are all < 2048)."""
    path = tmp_path_factory.mktemp("t5") / "t5-wide.safetensors"
    sd = ts.materialize(t5_spec(vocab=2048, d_model=64, d_kv=16, heads=4, d_ff=1024, layers=4), 0, torch.float32)
    ts.save_safetensors_deterministic(sd, str(path), {"note": "random weights"})
    return str(path)


def _size(module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@pytest.mark.parametrize("which", ["flux", "lumina2"])
def test_every_vram_mode_matches_highvram(te_files, wide_t5, which):
    store = WeightStore()
    if which == "flux":
        handle = ModelHandle(wide_t5, "clip", "flux", extra_paths=(te_files["clip_l"],))
    else:
        handle = ModelHandle(te_files["qwen3_4b"], "clip", "lumina2")

    def build(device, dtype):
        return build_component(handle, device, dtype, store)

    def encode(encoder):
        return encoder.encode("a photo of a cat")[0][0]

    expected = MemoryManager("cpu", {"vram_mode": "highvram"}).run(handle, build, encode)
    module = build("cpu", torch.float32)
    # embedding tables and buffers stay resident in every mode (each module counted: T5's table is shared)
    resident = sum(_size(m) for m in module.modules() if isinstance(m, torch.nn.Embedding))
    resident += sum(b.numel() * b.element_size() for b in module.buffers())
    budget = resident + (_size(module) - resident) // 3
    if which == "flux":
        assert budget < _size(module)
    for mode in MODES:
        manager = MemoryManager("cpu", {"vram_mode": mode, "vram_budget": budget})
        got = manager.run(handle, build, encode)
        assert torch.equal(got, expected), f"{which} in {mode} differs from highvram"
        assert manager.stats()["peak"] <= budget
        if which == "flux" and mode != "normalvram":
            assert manager.stats()["components"][0]["streamed_blocks"] > 0
