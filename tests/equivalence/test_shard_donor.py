"""Streaming from a donor device (issue 14 item 3): the source of streamed blocks is chosen by
measured bandwidth and room; on a machine with two CUDA devices, blocks kept on the donor stream
to the compute device and give the same output as host streaming. CPU-only machines have no
donor: the choice and the host path are what runs here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffmesh.devices.memory import MemoryManager
from diffmesh.devices.offload import choose_source


def test_fastest_source_with_room_wins():
    bandwidth = {"cpu": 20e9, "cuda:1": 300e9, "cuda:2": 400e9}
    assert choose_source(bandwidth, {"cuda:1": 8e9, "cuda:2": 8e9}, need=4_000_000_000) == "cuda:2"
    assert choose_source(bandwidth, {"cuda:1": 8e9, "cuda:2": 1e9}, need=4_000_000_000) == "cuda:1"
    assert choose_source(bandwidth, {"cuda:1": 1e9}, need=4_000_000_000) == "cpu"      # no donor holds it
    assert choose_source({"cpu": 20e9, "cuda:1": 10e9}, {"cuda:1": 8e9}, need=1) == "cpu"  # slower link


class _Stack(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(8))

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _streamed(device: str, settings: dict) -> tuple[torch.Tensor, dict]:
    manager = MemoryManager(device, {"vram_mode": "novram", **settings})
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    out = manager.run("stack", lambda dev, dtype: _Stack().to(dev), lambda m: m(x.to(device)).cpu())
    return out, next(c for c in manager.stats()["components"])


def test_host_streaming_reports_its_source():
    expected = _Stack()(torch.randn(4, 64, generator=torch.Generator().manual_seed(1)))
    out, stats = _streamed("cpu", {"vram_budget": 40_000})
    assert stats["streamed_blocks"] == 8 and stats["stream_source"] == "cpu"
    assert torch.equal(out, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (a donor and a compute device)")
def test_donor_streaming_matches_host_streaming():
    host, _ = _streamed("cuda:0", {"vram_budget": 40_000})
    donor, stats = _streamed("cuda:0", {"vram_budget": 40_000, "stream_donors": {"cuda:1": 2**30}})
    assert stats["stream_source"] in ("cuda:1", "cpu")          # by measured bandwidth
    assert torch.equal(host, donor)
