"""How devices connect: the peer-access matrix and measured copy bandwidth.

`peer_matrix(accelerators, nvml)` is diffmesh's `nvidia-smi topo -m`: for each pair of CUDA
devices, `X` (itself), `NV<n>` (NVLink, n active links on the source device), `P2P` (direct peer
access over PCIe) or `SYS` (copies go through host memory).

`measure_bandwidth(src, dst, nbytes)` times real copies: host->device (pinned source on CUDA),
device->host, device->device, and on a CPU-only machine host memcpy. The figure sets the slope of
streaming cost (seconds per GB streamed) and decides whether layer split across devices pays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Bandwidth:
    src: str
    dst: str
    nbytes: int
    seconds: float          # best of the repeats, one copy

    @property
    def gb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e9 if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "nbytes": self.nbytes, "seconds": self.seconds,
                "gb_per_s": round(self.gb_per_s, 3)}


def peer_matrix(accelerators: list, nvml_devices: list | None = None) -> dict[str, dict[str, str]]:
    """{"cuda:0": {"cuda:0": "X", "cuda:1": "NV4"|"P2P"|"SYS"}, ...}; {} without two CUDA devices."""
    cuda = [a for a in accelerators if a.kind == "cuda"]
    links = {d.index: d.nvlink_active for d in (nvml_devices or [])}
    matrix: dict[str, dict[str, str]] = {}
    for a in cuda:
        row: dict[str, str] = {}
        for b in cuda:
            if a.index == b.index:
                row[b.torch_device] = "X"
            elif torch.cuda.can_device_access_peer(a.index, b.index):
                row[b.torch_device] = f"NV{links[a.index]}" if links.get(a.index) else "P2P"
            else:
                row[b.torch_device] = "SYS"
        matrix[a.torch_device] = row
    return matrix


def format_matrix(matrix: dict[str, dict[str, str]]) -> str:
    """The matrix as a small text table (rows: source, columns: destination)."""
    if not matrix:
        return "(fewer than two CUDA devices: no peer links)"
    names = list(matrix)
    width = max(len(n) for n in names) + 2
    lines = [" " * width + "".join(n.ljust(width) for n in names)]
    for src in names:
        lines.append(src.ljust(width) + "".join(matrix[src].get(dst, "?").ljust(width) for dst in names))
    return "\n".join(lines)


def _sync(*devices: torch.device) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


def measure_bandwidth(src: str | torch.device, dst: str | torch.device, nbytes: int = 64 * 1024 ** 2,
                      repeats: int = 5) -> Bandwidth:
    """Best-of-`repeats` time of copying `nbytes` from `src` to `dst` (a CPU source is pinned for CUDA)."""
    src, dst = torch.device(src), torch.device(dst)
    source = torch.empty(nbytes, dtype=torch.uint8, device=src)
    if src.type == "cpu" and dst.type == "cuda":
        source = source.pin_memory()
    target = torch.empty(nbytes, dtype=torch.uint8, device=dst)
    if dst.type == "cpu" and src.type == "cuda":
        target = target.pin_memory()
    source.fill_(1)
    target.copy_(source)  # warm-up: page faults, peer mappings
    _sync(src, dst)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        target.copy_(source, non_blocking=True)
        _sync(src, dst)
        best = min(best, time.perf_counter() - start)
    return Bandwidth(str(src), str(dst), nbytes, best)


def measure_links(accelerators: list, nbytes: int = 64 * 1024 ** 2, repeats: int = 5) -> list[Bandwidth]:
    """Host memcpy, then host<->device for each device, then device->device for each ordered pair."""
    results = [measure_bandwidth("cpu", "cpu", nbytes, repeats)]
    devices = [a.torch_device for a in accelerators if a.kind in ("cuda", "xpu", "mps")]
    for device in devices:
        results.append(measure_bandwidth("cpu", device, nbytes, repeats))
        results.append(measure_bandwidth(device, "cpu", nbytes, repeats))
    for a in devices:
        for b in devices:
            if a != b:
                results.append(measure_bandwidth(a, b, nbytes, repeats))
    return results
