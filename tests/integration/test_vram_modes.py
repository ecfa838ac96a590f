"""Every VRAM mode gives the highvram result on the real components `build_component` makes.

Tiny SD1 checkpoint (fixtures), CPU device with an imposed budget of about 30% of each component
(more for the tiny CLIP, whose token embedding alone is most of it);
fp32 everywhere, so the outputs must be identical. The full-size SD1.5 UNet check is marked slow.
"""

from __future__ import annotations

import pytest
import torch

from diffmesh.devices.memory import MemoryManager
from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import WeightStore, build_component

MODES = ("highvram", "normalvram", "lowvram", "novram")


def _builder(handle, store):
    return lambda device, dtype: build_component(handle, device, dtype, store)


def _size(handle, store) -> int:
    module = build_component(handle, "cpu", torch.float32, store)
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _budget(handle, store, fraction: float) -> int:
    """`fraction` of the component, but room for its largest indivisible module (the tiny CLIP's token
    embedding is most of that model) plus its buffers."""
    module = build_component(handle, "cpu", torch.float32, store)
    largest = max(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in module.modules())
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    size = _size(handle, store)
    return min(size, max(int(size * fraction), int(1.2 * largest) + buffers))


def _calls(context_dim: int):
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, context_dim, generator=g)
    latent = torch.randn(1, 4, 8, 8, generator=g)
    return {
        "unet": lambda unet: unet(x, torch.tensor([999.0, 20.0]), ctx),
        "vae": lambda vae: vae.decode(latent),
        "clip": lambda clip: clip.encode("a photo of a cat")[0][0],
    }


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return tiny_models["sd1"]


@pytest.mark.parametrize("component", ["unet", "vae", "clip"])
def test_every_vram_mode_matches_highvram_on_tiny_sd1_components(sd1, component):
    store = WeightStore()
    handle = ModelHandle(sd1, component, "sd1")
    fn = _calls(context_dim=32)[component]
    expected = MemoryManager("cpu", {"vram_mode": "highvram"}).run(handle, _builder(handle, store), fn)
    budget = _budget(handle, store, 0.3)
    if component != "clip":   # the tiny CLIP is 98% token embedding: its budget is the whole model
        assert budget < _size(handle, store)
    for mode in MODES[1:]:
        manager = MemoryManager("cpu", {"vram_mode": mode, "vram_budget": budget})
        got = manager.run(handle, _builder(handle, store), fn)
        assert torch.equal(got, expected), f"{component} in {mode} differs from highvram"
        assert manager.stats()["peak"] <= budget


def test_lowvram_on_tiny_unet_streams_and_stays_within_a_quarter_budget(sd1):
    store = WeightStore()
    handle = ModelHandle(sd1, "unet", "sd1")
    budget = _size(handle, store) // 4
    manager = MemoryManager("cpu", {"vram_mode": "lowvram", "vram_budget": budget})
    manager.run(handle, _builder(handle, store), _calls(32)["unet"])
    stats = manager.stats()
    assert stats["components"][0]["streamed_blocks"] > 0
    assert stats["peak"] <= budget * 1.10


@pytest.mark.slow
def test_full_sd15_unet_lowvram_at_a_quarter_budget_matches_highvram(sd15_full_checkpoint):
    store = WeightStore()
    handle = ModelHandle(str(sd15_full_checkpoint), "unet", "sd1")
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 4, 32, 32, generator=g), torch.randn(1, 77, 768, generator=g)
    fn = lambda unet: unet(x, torch.tensor([500.0]), ctx)  # noqa: E731
    highvram = MemoryManager("cpu", {"vram_mode": "highvram"})
    expected = highvram.run(handle, _builder(handle, store), fn)
    size = highvram.stats()["components"][0]["size"]
    highvram.unload_all()
    budget = size // 4
    manager = MemoryManager("cpu", {"vram_mode": "lowvram", "vram_budget": budget})
    got = manager.run(handle, _builder(handle, store), fn)
    assert torch.equal(got, expected)
    assert manager.stats()["peak"] <= budget * 1.10
