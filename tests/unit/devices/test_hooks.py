"""Streaming and cast hooks attach as named, removable hooks and refuse conflicts."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from diffmesh.devices import hooks
from diffmesh.devices.offload import STREAM_HOOK, Placement, find_blocks
from diffmesh.devices.precision import CAST_HOOK, attach_cast_hooks, detach_cast_hooks, store_in

from .tiny import unet_builder, unet_call


def _no_hooks(module: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks and not hooks.attached(m) for m in module.modules())


def test_streaming_hooks_are_removed_and_the_module_forward_is_unchanged():
    build = unet_builder()
    unet = build("cpu", torch.float32)
    fn = unet_call()
    before = fn(unet)
    used = []
    placement = Placement(unet, torch.device("cpu"), used.append)
    placement.adopt(on_device=True)
    placement.place_partial(resident_bytes=build.nbytes // 4, limit=build.nbytes // 16, prefetch=True)
    assert placement.streamed and any(STREAM_HOOK in hooks.attached(b.module) for b in placement.streamed)
    assert torch.equal(fn(unet), before)
    placement.load_all()                                  # whole model back: hooks gone
    assert _no_hooks(unet)
    assert torch.equal(fn(unet), before)
    assert sum(used) == build.nbytes                      # accounting balanced: all weights live again


def test_a_second_hook_with_the_same_name_or_a_foreign_offload_hook_is_refused():
    layer = nn.Linear(4, 4)
    hooks.attach(layer, STREAM_HOOK, lambda m, a: None)
    with pytest.raises(hooks.HookConflict):
        hooks.attach(layer, STREAM_HOOK, lambda m, a: None)
    hooks.detach(layer, STREAM_HOOK)
    assert _no_hooks(layer)
    layer._hf_hook = object()                             # accelerate already drives this module
    with pytest.raises(hooks.HookConflict, match="accelerate"):
        hooks.attach(layer, STREAM_HOOK, lambda m, a: None)


def test_outer_hooks_wrap_inner_hooks_whatever_the_attach_order():
    layer = nn.Linear(2, 2)
    order = []
    hooks.attach(layer, "inner", lambda m, a: order.append("inner-pre"), lambda m, a, o: order.append("inner-post"))
    hooks.attach(layer, "outer", lambda m, a: order.append("outer-pre"), lambda m, a, o: order.append("outer-post"),
                 outer=True)
    layer(torch.zeros(1, 2))
    assert order == ["outer-pre", "inner-pre", "inner-post", "outer-post"]


def test_fp8_cast_hooks_compute_in_fp32_and_detach_cleanly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(3, 16)
    expected = model(x)
    assert store_in(model, torch.float8_e4m3fn) == 2
    assert attach_cast_hooks(model, torch.float32) == 2
    got = model(x)
    assert got.dtype == torch.float32 and model[0].weight.dtype == torch.float8_e4m3fn
    assert (got - expected).norm() / expected.norm() < 0.1
    assert detach_cast_hooks(model) == 2 and all(CAST_HOOK not in hooks.attached(m) for m in model.modules())


def test_blocks_partition_every_parameter_and_skip_uncalled_containers():
    unet = unet_builder()("cpu", torch.float32)
    total = sum(p.numel() * 4 for p in unet.parameters())
    blocks = find_blocks(unet, total // 16)
    assert not any(isinstance(m, (nn.ModuleList, nn.ModuleDict)) for _, m in blocks)
    covered = {id(p) for _, m in blocks for p in m.parameters()}
    assert covered == {id(p) for p in unet.parameters()}


def test_embedding_tables_and_weights_read_outside_a_forward_never_stream():
    class Holder(nn.Module):          # no forward of its own: its owner reads the weights
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(10, 8)
            self.scale = nn.Parameter(torch.ones(8))

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.holder = Holder()
            self.proj = nn.Linear(8, 8)

        def forward(self, ids):
            return self.proj(self.holder.table.weight[ids] * self.holder.scale)

    torch.manual_seed(0)
    model = Model()
    ids = torch.tensor([1, 2, 3])
    expected = model(ids)
    placement = Placement(model, torch.device("cpu"), lambda n: None)
    placement.adopt(on_device=True)
    placement.place_partial(resident_bytes=0, limit=1, prefetch=False)      # novram
    assert [b.name for b in placement.streamed] == ["proj"]
    assert torch.equal(model(ids), expected)
