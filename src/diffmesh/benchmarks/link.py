"""Link speed between workers, measured through the groups the strategies exchange in.

`measure_link(engine, workers)` opens (or reuses) the engine's sequence group of `workers` — the
same standalone `torch.distributed` group sequence and patch parallel use (gloo over loopback
between CPU workers) — and has every member run `probe` at once: all-gathers of fp32 tensors of a
few sizes, each timed several times (`SIZES` x `REPEATS` for `diffmesh bench`, about a second on
loopback; `QUICK_SIZES` x `QUICK_REPEATS` for the planner, `engine.explain`, about 0.5 s). The
cost model wants two figures per link (`DeviceFacts`): `latency`, the time of one collective
carrying almost nothing (the smaller median of the two smallest probes), and `peer_bw`, bytes one
member receives per second: the inverse slope of a least-squares line through the medians of the
other sizes against the bytes each member receives (an all-gather of m bytes per member brings
(N-1) m bytes to each). The figures are what a step's exchanges see on this machine now, load
included.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

SIZES = (4 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20)      # bytes each member contributes
REPEATS = 7
# The planner's probe, about 0.5 s on loopback. It reaches 16 MB because gloo's loopback speed drops
# past ~8 MB (cache-sized copies: ~450 MB/s at 8 MB, ~240 MB/s from 16 to 64 MB on the dev machine),
# and the big exchanges (sharded weights' block gathers) run at the lower speed.
QUICK_SIZES = (4 << 10, 64 << 10, 1 << 20, 16 << 20)
QUICK_REPEATS = 3


def probe(group: Any, world: int, sizes: tuple[int, ...] = SIZES, repeats: int = REPEATS,
          on_device: bool = False) -> dict[str, list[float]]:
    """Worker side: time `repeats` all-gathers of each size (after one untimed round); every member
    of `group` must call this at once with the same arguments. {str(size): [seconds, ...]}."""
    where = torch.device("cuda", torch.cuda.current_device()) if on_device else torch.device("cpu")
    out: dict[str, list[float]] = {}
    for size in sizes:
        local = torch.ones(max(1, size // 4), dtype=torch.float32, device=where)
        gathered = [torch.empty_like(local) for _ in range(world)]
        group.allgather([gathered], [local]).wait()            # connections warm, buffers touched
        times = []
        for _ in range(repeats):
            if on_device:
                torch.cuda.synchronize(where)
            start = time.perf_counter()
            group.allgather([gathered], [local]).wait()
            if on_device:
                torch.cuda.synchronize(where)
            times.append(time.perf_counter() - start)
        out[str(size)] = times
    return out


def fit(samples: dict[str, list[float]], world: int) -> dict[str, float]:
    """Latency (s per collective) and bandwidth (bytes received per member per s) from `probe`'s
    times {str(size): [s, ...]}: see the module doc."""
    sizes = sorted(int(s) for s in samples)
    medians = {s: statistics.median(samples[str(s)]) for s in sizes}
    latency = min(medians[s] for s in sizes[:2])
    points = [((world - 1) * s, medians[s]) for s in (sizes[1:] if len(sizes) > 2 else sizes)]
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    if slope <= 0:                       # noise swamped the sizes: fall back to the largest alone
        x, y = points[-1]
        slope = max(y - latency, 1e-9) / x
    return {"latency": latency, "peer_bw": 1.0 / slope}


def measure_link(engine: Any, workers: tuple[int, ...], sizes: tuple[int, ...] = SIZES,
                 repeats: int = REPEATS) -> dict[str, Any]:
    """Engine side: probe the link among `workers` through the engine's sequence group of them.
    Returns the fitted `latency` and `peer_bw`, each member's medians per size, and the group name.
    A probe that fails drops the group (a member may have left it mid-collective) and raises."""
    group = engine.sequence_groups.group(tuple(workers))
    futures = [engine.executor.call(w, "probe_link", group.group, list(sizes), repeats) for w in workers]
    try:
        per_member = [f.result() for f in futures]
    except Exception:
        engine.sequence_groups.drop(group)
        raise
    # the slowest member sets the pace of a collective: take, per size, the largest median
    combined = {str(s): [max(statistics.median(m[str(s)]) for m in per_member)] for s in sizes}
    figures = fit(combined, len(workers))
    return {"workers": list(workers), "group": group.group, "latency_s": figures["latency"],
            "peer_bw_bytes_per_s": figures["peer_bw"],
            "median_s_by_size": {s: v[0] for s, v in combined.items()}}


def combine(probes: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure from several probes of the same link (before and after a run): the mean latency and
    the mean time per byte (so the bandwidth is the harmonic mean)."""
    latency = statistics.fmean(p["latency_s"] for p in probes)
    per_byte = statistics.fmean(1.0 / p["peer_bw_bytes_per_s"] for p in probes)
    return {"latency_s": latency, "peer_bw_bytes_per_s": 1.0 / per_byte if per_byte else float("inf"),
            "probes": len(probes)}
