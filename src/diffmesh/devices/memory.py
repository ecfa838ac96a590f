"""Per-device memory manager: budgets, offload, block streaming, out-of-memory recovery.

One `MemoryManager(device, settings)` per worker. It materializes model handles on its device
(`build(device, dtype)`), knows the bytes (parameters + buffers) every loaded component holds on
the device, and keeps the total within the device budget: total memory minus `reserve_vram`, or
the imposed `vram_budget` (on a CPU device only an imposed budget limits anything). The memory
mode of each model decides how (semantics table: docs/devices.md):

    highvram    whole model resident; evicted only when nothing else can make room
    normalvram  whole model while used; idle models go to the host store, least recently used
                first, when room is needed (after every call with smart_memory off)
    lowvram     buffers and as many blocks as fit stay; the other blocks stream per forward
    novram      every block streams

Accounting is real: a weight is either a device tensor counted here or lives only in the host
store (`diffmesh.devices.offload.Placement`). Going over the budget raises `BudgetExceeded`, a
`torch.OutOfMemoryError`, exactly where a device would fail, so CPU tests exercise recovery.
`run(handle, build, fn)` recovers from out-of-memory once (free idle models, lower this model's
mode, retry) and then raises `DeviceOutOfMemory` naming the device and the flag to try.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from diffmesh.devices.offload import Placement
from diffmesh.devices.precision import DeviceFacts, Precision, attach_cast_hooks, resolve_precision, store_in
from diffmesh.errors import ConfigError, DeviceOutOfMemory

log = logging.getLogger(__name__)

MODES = ("highvram", "normalvram", "lowvram", "novram")
CUDA_DEFAULT_RESERVE = 512 * 1024 ** 2
MB = 1024 ** 2


class BudgetExceeded(torch.OutOfMemoryError):
    """The accounted bytes would exceed the device budget (raised where the device would fail)."""


@dataclass
class _Loaded:
    handle: Any
    component: Any
    placement: Placement | None            # None: not an nn.Module (opaque, unaccounted)
    mode: str
    precision: Precision
    placed: bool = False
    in_use: int = 0
    last_used: int = 0
    accounted: int = 0
    peak: int = 0
    layout: Any = None                     # a group layout (parallel.shard / parallel.layersplit), else None


def _name(handle: Any) -> str:
    component = getattr(handle, "component", None)
    path = getattr(handle, "path", None)
    if component and path:
        return f"{component}:{os.path.basename(str(path))}"
    return str(handle)


class MemoryManager:
    """Loads components on one device within its budget (see the module docstring)."""

    def __init__(self, device: torch.device | str, settings: dict[str, Any] | None = None):
        self.device = torch.device(device)
        self.settings = dict(settings or {})
        self.default_mode = self.settings.get("vram_mode") or "normalvram"
        if self.default_mode not in MODES:
            raise ConfigError(f"unknown vram mode {self.default_mode!r}", where="settings.vram_mode",
                              fix=f"use one of: {', '.join(MODES)}")
        self.smart_memory = bool(self.settings.get("smart_memory", True))
        self.budget = self._budget()
        self._entries: dict[Any, _Loaded] = {}
        self._modes: dict[Any, str] = {}      # modes lowered by out-of-memory recovery, per handle
        self._current = 0
        self._peak = 0
        self._tick = 0
        self._facts: DeviceFacts | None = None
        self._bandwidth: dict[str, float] | None = None   # measured copy speed of each stream source
        self._lock = threading.RLock()

    # -- budget and accounting ---------------------------------------------------------------------
    def _budget(self) -> int | None:
        imposed = self.settings.get("vram_budget")
        reserve = self.settings.get("reserve_vram")
        total = None
        if self.device.type == "cuda":
            total = torch.cuda.get_device_properties(self.device).total_memory
            reserve = CUDA_DEFAULT_RESERVE if reserve is None else reserve
        elif self.device.type == "mps":
            total = torch.mps.recommended_max_memory()
        budget = total - int(reserve or 0) if total is not None else None
        if imposed is not None:
            budget = int(imposed) if budget is None else min(budget, int(imposed))
        return budget

    @property
    def facts(self) -> DeviceFacts:
        if self._facts is None:
            self._facts = DeviceFacts.of(self.device)
        return self._facts

    def free_bytes(self) -> float:
        """Room left under the budget (inf without a budget)."""
        return float("inf") if self.budget is None else self.budget - self._current

    def _account(self, handle: Any, delta: int) -> None:
        """Count `delta` bytes for `handle`; over budget: evict idle models, else raise BudgetExceeded."""
        with self._lock:
            if delta > 0 and self.budget is not None and self._current + delta > self.budget:
                self._evict(self._current + delta - self.budget, exclude=handle)
                if self._current + delta > self.budget:
                    raise BudgetExceeded(
                        f"{self.device}: {_name(handle)} needs {delta / MB:.1f} MB more, "
                        f"{self._current / MB:.1f} MB of the {self.budget / MB:.1f} MB budget are in use")
            self._current += delta
            self._peak = max(self._peak, self._current)
            entry = self._entries.get(handle)
            if entry is not None:
                entry.accounted += delta
                entry.peak = max(entry.peak, entry.accounted)

    def _evict(self, need: int, exclude: Any) -> int:
        """Offload idle models (normalvram and streamed first, then highvram; LRU) until `need` bytes are free."""
        freed = 0
        idle = [e for h, e in self._entries.items()
                if h != exclude and e.in_use == 0 and e.accounted > 0 and e.placement is not None]
        idle.sort(key=lambda e: (e.mode == "highvram", e.last_used))
        for entry in idle:
            if freed >= need:
                break
            before = entry.accounted
            self._offload(entry)
            freed += before - entry.accounted
        return freed

    def _offload(self, entry: _Loaded) -> None:
        if entry.layout is not None:
            entry.layout.release()
        if entry.placement is not None:
            entry.placement.offload_all()
        entry.placed = False

    # -- loading -------------------------------------------------------------------------------------
    def _build(self, handle: Any, build: Callable[[torch.device, Any], Any], layout: Any = None) -> _Loaded:
        self._drop_idle_variants(handle)
        precision = resolve_precision(getattr(handle, "component", None), self.facts, self.settings,
                                      getattr(handle, "dtype", None))
        mode = "grouped" if layout is not None else self._modes.get(handle, self.default_mode)
        whole = mode in ("highvram", "normalvram")
        build_device = self.device if whole else torch.device("cpu")   # streamed models are built in host memory
        component = build(build_device, precision.compute)
        if not isinstance(component, nn.Module):
            entry = _Loaded(handle, component, None, mode, precision, placed=True)
            self._entries[handle] = entry
            return entry
        if precision.is_fp8:
            store_in(component, precision.storage)
            attach_cast_hooks(component, precision.compute)
        placement = Placement(component, self.device, lambda delta, h=handle: self._account(h, delta))
        entry = _Loaded(handle, component, placement, mode, precision)
        if layout is not None:
            entry.layout = layout(placement)   # places itself in _place: its share of the weights
        self._entries[handle] = entry
        placement.adopt(whole)  # BudgetExceeded leaves the weights in the host store
        if whole:
            entry.placed = True
        else:
            self._place(entry)
        if build_device != self.device and isinstance(getattr(component, "device", None), torch.device):
            with contextlib.suppress(AttributeError):
                component.device = self.device  # protocol attribute: where the component computes
        return entry

    def _drop_idle_variants(self, handle: Any) -> None:
        """Forget idle builds of the same base weights (another LoRA strength, CLIP skip): a user
        tuning a strength would otherwise pile up one full model copy in memory per value tried."""
        weights = getattr(handle, "weights_key", None)
        if weights is None:
            return
        for other, entry in list(self._entries.items()):
            if other != handle and entry.in_use == 0 and getattr(other, "weights_key", None) == weights:
                self.unload(other)

    def _place(self, entry: _Loaded) -> None:
        """Put an offloaded component back on the device according to its mode."""
        placement = entry.placement
        if placement is None:
            entry.placed = True
            return
        if entry.layout is not None:
            entry.layout.place()
        elif entry.mode in ("highvram", "normalvram"):
            placement.load_all()
        else:
            placement.offload_all()
            placement.use_source(self._stream_source(placement.total_bytes))
            total = placement.total_bytes
            if self.free_bytes() < total:
                self._evict(int(min(total - self.free_bytes(), total)), exclude=entry.handle)
            room = self.free_bytes()
            inflight = 2 if self.device.type == "cuda" else 1
            limit = max(1, total // 16)
            if room != float("inf"):
                limit = max(1, min(limit, int(room) // (inflight + 2)))
            resident = 0
            if entry.mode == "lowvram":
                resident = total if room == float("inf") else int(room) - inflight * placement.max_block_bytes(limit)
            placement.place_partial(max(0, resident), limit, prefetch=True)
        entry.placed = True

    def _stream_source(self, need: int) -> str:
        """Where streamed blocks come from: host memory, or a donor device from the `stream_donors`
        setting ({device: spare bytes}) when its measured copy speed to this device is higher."""
        donors = self.settings.get("stream_donors") or {}
        if not donors:
            return "cpu"
        from diffmesh.devices.offload import choose_source
        from diffmesh.devices.topology import measure_bandwidth

        if self._bandwidth is None:            # measured once per manager: 16 MB copies, best of 3
            self._bandwidth = {src: measure_bandwidth(src, self.device, 16 * MB, 3).gb_per_s * 1e9
                               for src in ["cpu", *donors]}
        return choose_source(self._bandwidth, {d: float(r) for d, r in donors.items()}, need)

    def _ensure(self, handle: Any, build: Callable[[torch.device, Any], Any], layout: Any = None) -> _Loaded:
        entry = self._entries.get(handle)
        if entry is None:
            return self._build(handle, build, layout)
        if not entry.placed:
            self._place(entry)
        return entry

    # -- public interface ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def use(self, handle: Any, build: Callable[[torch.device, Any], Any], layout: Any = None) -> Iterator[Any]:
        """The component of `handle`, ready on the device for the duration of the block. `layout`
        (`layout(placement)` -> an object with place/release_transient/release) places a member's
        part of a model shared by a group (sharded weights, layer split) instead of a memory mode."""
        with self._lock:
            entry = self._ensure(handle, build, layout)
            entry.in_use += 1
            self._tick += 1
            entry.last_used = self._tick
        try:
            yield entry.component
        finally:
            with self._lock:
                entry.in_use -= 1
                if entry.placement is not None:
                    entry.placement.release_transient()
                if entry.layout is not None:
                    entry.layout.release_transient()
                if entry.in_use == 0 and not self.smart_memory and entry.mode != "highvram":
                    self._offload(entry)

    def run(self, handle: Any, build: Callable[[torch.device, Any], Any], fn: Callable[[Any], Any],
            layout: Any = None) -> Any:
        """`fn(component)`; on out-of-memory: free, lower this model's mode, retry once, then raise."""
        try:
            with self.use(handle, build, layout) as component:
                return fn(component)
        except torch.OutOfMemoryError:
            self._recover(handle)
        try:
            with self.use(handle, build, layout) as component:
                return fn(component)
        except torch.OutOfMemoryError as exc:
            mode = self._modes.get(handle, self.default_mode)
            self._recover(handle)
            raise DeviceOutOfMemory(
                f"{self.device} ran out of memory running {_name(handle)} in {mode} mode "
                f"(budget {self._budget_text()}): {exc}", where=str(self.device), fix=self._advice(mode)) from exc

    def _budget_text(self) -> str:
        return "none" if self.budget is None else f"{self.budget / MB:.1f} MB"

    def _advice(self, mode: str) -> str:
        if mode == "grouped":
            return ("this device's share of the model (sharded weights or layer split) does not fit: raise "
                    "--vram-budget, use more workers (--workers N), or --parallel none to stream on one device")
        if mode != "novram":
            return "start with --lowvram or --novram, raise --vram-budget, or lower --reserve-vram"
        return ("even streaming every block does not fit: lower the resolution or batch size, raise --vram-budget, "
                "or place this model on a larger device")

    def _recover(self, handle: Any) -> None:
        """Free everything idle, offload this model and lower its mode one step (to lowvram if it cannot fit)."""
        with self._lock:
            for other in list(self._entries.values()):
                if other.in_use == 0:
                    self._offload(other)
            entry = self._entries.get(handle)
            mode = entry.mode if entry else self._modes.get(handle, self.default_mode)
            # a group layout keeps its layout (its share is fixed by the group): only the freeing helps
            lower = MODES[min(MODES.index(mode) + 1, len(MODES) - 1)] if mode in MODES else mode
            size = entry.placement.total_bytes if entry and entry.placement else None
            if lower == "normalvram" and size is not None and self.budget is not None and size > self.budget:
                lower = "lowvram"
            self._modes[handle] = lower
            log.warning("%s: out of memory running %s in %s mode (budget %s); freed idle models, retrying in %s mode",
                        self.device, _name(handle), mode, self._budget_text(), lower)
            if entry is not None:
                entry.mode = lower
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def mode_of(self, handle: Any) -> str:
        entry = self._entries.get(handle)
        return entry.mode if entry else self._modes.get(handle, self.default_mode)

    def layout_of(self, handle: Any) -> Any:
        """The group layout `handle` is loaded with (`parallel.grouped`), else None."""
        entry = self._entries.get(handle)
        return entry.layout if entry else None

    def unload(self, handle: Any) -> None:
        with self._lock:
            entry = self._entries.get(handle)
            if entry is not None:
                self._offload(entry)           # a group layout also gives back its shards and workspace
            self._entries.pop(handle, None)

    def unload_all(self) -> None:
        with self._lock:
            for handle in list(self._entries):
                self.unload(handle)
            self._modes.clear()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        with self._lock:
            self._peak = self._current
            for entry in self._entries.values():
                entry.peak = entry.accounted

    def stats(self) -> dict[str, Any]:
        """Current and peak accounted bytes for the device and per component, with each mode."""
        with self._lock:
            components = []
            for entry in self._entries.values():
                p = entry.placement
                components.append({
                    "name": _name(entry.handle), "component": getattr(entry.handle, "component", None),
                    "mode": entry.mode, "size": p.total_bytes if p else None, "on_device": entry.accounted,
                    "peak": entry.peak, "placed": entry.placed, "in_use": entry.in_use,
                    "resident_blocks": len(p.resident_blocks) if p else 0, "streamed_blocks": len(p.streamed) if p else 0,
                    "streamed_bytes": p.streamed_bytes() if p else 0,
                    "stream_source": str(p.source) if p else None, **entry.precision.to_dict(),
                    **({"layout": entry.layout.stats()} if entry.layout is not None else {})})
            return {"device": str(self.device), "budget": self.budget, "current": self._current, "peak": self._peak,
                    "default_mode": self.default_mode, "smart_memory": self.smart_memory, "loaded": len(self._entries),
                    "components": components}
