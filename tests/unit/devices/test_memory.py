"""MemoryManager on a CPU device with imposed budgets: modes, accounting, eviction, OOM recovery."""

from __future__ import annotations

import pytest
import torch

from diffmesh.devices.memory import BudgetExceeded, MemoryManager
from diffmesh.errors import DeviceOutOfMemory

from .tiny import clip_builder, clip_call, handle, mlp_builder, unet_builder, unet_call, vae_builder, vae_call

MODES = ("highvram", "normalvram", "lowvram", "novram")


@pytest.fixture(scope="module")
def unet():
    return unet_builder()


@pytest.fixture(scope="module")
def vae():
    return vae_builder()


def _reference(builder, fn, component):
    return MemoryManager("cpu", {"vram_mode": "highvram"}).run(handle(component), builder, fn)


@pytest.mark.parametrize("mode", MODES)
def test_every_vram_mode_gives_the_highvram_unet_output_exactly(unet, mode):
    fn = unet_call()
    expected = _reference(unet, fn, "unet")
    manager = MemoryManager("cpu", {"vram_mode": mode, "vram_budget": unet.nbytes // 3})
    got = manager.run(handle("unet"), unet, fn)
    assert torch.equal(got, expected)
    again = manager.run(handle("unet"), unet, fn)   # second call: hooks and resident blocks reused
    assert torch.equal(again, expected)


@pytest.mark.parametrize("mode", MODES)
def test_every_vram_mode_gives_the_highvram_vae_and_text_encoder_output_exactly(vae, mode):
    clip = clip_builder()
    # the text encoder's embedding tables always stay resident (about 40% of this tiny one)
    for builder, fn, component, share in ((vae, vae_call(), "vae", 0.33), (clip, clip_call(), "clip", 0.6)):
        expected = _reference(builder, fn, component)
        manager = MemoryManager("cpu", {"vram_mode": mode, "vram_budget": int(builder.nbytes * share)})
        assert torch.equal(manager.run(handle(component), builder, fn), expected)


def test_lowvram_peak_stays_within_a_quarter_budget_plus_ten_percent(unet):
    budget = unet.nbytes // 4
    manager = MemoryManager("cpu", {"vram_mode": "lowvram", "vram_budget": budget})
    manager.run(handle("unet"), unet, unet_call())
    stats = manager.stats()
    (component,) = stats["components"]
    assert component["mode"] == "lowvram"
    assert component["streamed_blocks"] > 0 and component["resident_blocks"] > 0
    assert 0 < stats["peak"] <= budget * 1.10
    assert stats["current"] <= budget


def test_novram_keeps_only_one_block_on_the_device_between_calls(unet):
    manager = MemoryManager("cpu", {"vram_mode": "novram", "vram_budget": unet.nbytes // 4})
    manager.run(handle("unet"), unet, unet_call())
    stats = manager.stats()
    assert stats["current"] == 0                       # nothing resident (the tiny UNet has no buffers)
    assert 0 < stats["peak"] <= unet.nbytes // 4


def test_highvram_under_a_too_small_budget_recovers_by_streaming_and_completes(unet):
    fn = unet_call()
    expected = _reference(unet, fn, "unet")
    manager = MemoryManager("cpu", {"vram_mode": "highvram", "vram_budget": unet.nbytes // 2})
    got = manager.run(handle("unet"), unet, fn)
    assert torch.equal(got, expected)
    assert manager.mode_of(handle("unet")) == "lowvram"   # whole model cannot fit: straight to lowvram
    assert manager.stats()["peak"] <= unet.nbytes // 2


def test_out_of_memory_that_recovery_cannot_fix_names_the_device_and_the_flag():
    builder = mlp_builder(width=64, depth=2)
    manager = MemoryManager("cpu", {"vram_mode": "novram", "vram_budget": 1024})   # smaller than one Linear
    with pytest.raises(DeviceOutOfMemory) as info:
        manager.run(handle("unet"), builder, lambda m: m(torch.randn(1, 64)))
    text = str(info.value)
    assert "cpu" in text and "novram" in text and "--vram-budget" in text
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)
    assert manager.stats()["current"] == 0                # nothing leaked: the next prompt can run


def test_budget_accounting_raises_a_torch_out_of_memory_error():
    builder = mlp_builder()
    manager = MemoryManager("cpu", {"vram_mode": "highvram", "vram_budget": builder.nbytes // 2})
    with pytest.raises(torch.OutOfMemoryError) as info:
        with manager.use(handle("unet"), builder):
            pass
    assert isinstance(info.value, BudgetExceeded)


def test_normalvram_evicts_the_least_recently_used_idle_model_to_the_host_store(unet, vae):
    budget = max(unet.nbytes, vae.nbytes) + min(unet.nbytes, vae.nbytes) // 2   # only one fits at a time
    manager = MemoryManager("cpu", {"vram_mode": "normalvram", "vram_budget": budget})
    u, v = handle("unet"), handle("vae")
    out1 = manager.run(u, unet, unet_call())
    manager.run(v, vae, vae_call())
    by_name = {c["component"]: c for c in manager.stats()["components"]}
    assert by_name["unet"]["on_device"] == 0 and by_name["vae"]["on_device"] == vae.nbytes
    out2 = manager.run(u, unet, unet_call())             # reloaded from the host store, not rebuilt
    assert torch.equal(out1, out2) and unet.calls >= 1
    builds = unet.calls
    manager.run(u, unet, unet_call())
    assert unet.calls == builds
    assert manager.stats()["peak"] <= budget


def test_highvram_keeps_idle_models_resident_when_they_fit(unet, vae):
    manager = MemoryManager("cpu", {"vram_mode": "highvram", "vram_budget": 10 * (unet.nbytes + vae.nbytes)})
    manager.run(handle("unet"), unet, unet_call())
    manager.run(handle("vae"), vae, vae_call())
    assert manager.stats()["current"] == unet.nbytes + vae.nbytes


def test_disabled_smart_memory_offloads_a_model_after_each_call(unet):
    manager = MemoryManager("cpu", {"vram_mode": "normalvram", "smart_memory": False})
    manager.run(handle("unet"), unet, unet_call())
    stats = manager.stats()
    assert stats["current"] == 0 and stats["peak"] == unet.nbytes


def test_unload_all_frees_every_accounted_byte(unet, vae):
    manager = MemoryManager("cpu", {"vram_mode": "lowvram", "vram_budget": unet.nbytes // 2})
    manager.run(handle("unet"), unet, unet_call())
    manager.run(handle("vae"), vae, vae_call())
    manager.unload_all()
    stats = manager.stats()
    assert stats["current"] == 0 and stats["loaded"] == 0


def test_stats_report_modes_sizes_and_dtypes_per_component(unet):
    manager = MemoryManager("cpu", {"vram_mode": "lowvram", "vram_budget": unet.nbytes // 2})
    manager.run(handle("unet"), unet, unet_call())
    (component,) = manager.stats()["components"]
    assert component["name"] == "unet:tiny.safetensors"
    assert component["size"] == unet.nbytes
    assert component["storage"] == "float32" and component["compute"] == "float32"
    assert component["on_device"] + component["streamed_bytes"] == unet.nbytes


def test_bf16_flag_builds_in_bf16_and_stays_close_to_fp32(unet):
    expected = _reference(unet, unet_call(), "unet")
    manager = MemoryManager("cpu", {"vram_mode": "lowvram", "vram_budget": unet.nbytes // 4,
                                    "dtypes": {"unet": "bf16"}})
    got = manager.run(handle("unet"), unet, unet_call(torch.bfloat16))
    rel = (got - expected).norm() / expected.norm()
    assert rel < 3e-2
    assert manager.stats()["components"][0]["storage"] == "bfloat16"


def test_fp8_storage_computes_in_fp32_on_cpu_within_tolerance():
    builder = mlp_builder()
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    fn = lambda m: m(x)  # noqa: E731
    expected = _reference(builder, fn, "unet")
    for mode in MODES:
        manager = MemoryManager("cpu", {"vram_mode": mode, "vram_budget": builder.nbytes // 3,
                                        "dtypes": {"unet": "fp8_e4m3fn"}})
        got = manager.run(handle("unet"), builder, fn)
        assert got.dtype == torch.float32
        assert (got - expected).norm() / expected.norm() < 0.1
        stats = manager.stats()
        assert stats["components"][0]["storage"] == "float8_e4m3fn"
        assert stats["components"][0]["size"] < builder.nbytes / 2      # weights really stored in 1 byte
