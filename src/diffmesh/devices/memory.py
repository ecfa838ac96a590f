"""Per-device memory manager (minimal version: keeps every component resident).

The devices issue replaces this with budgets, offload, streaming and OOM recovery behind the
same interface: `use(handle, build)` is a context manager yielding the component ready on the
device; `build(device, dtype)` materializes it when it is not loaded.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

import torch


class MemoryManager:
    def __init__(self, device: torch.device, settings: dict[str, Any] | None = None):
        self.device = device
        self.settings = dict(settings or {})
        self._loaded: dict[Any, Any] = {}
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def use(self, handle, build: Callable[[torch.device, Any], Any]) -> Iterator[Any]:
        with self._lock:
            component = self._loaded.get(handle)
            if component is None:
                component = build(self.device, handle.dtype)
                self._loaded[handle] = component
        yield component

    def run(self, handle, build: Callable[[torch.device, Any], Any], fn: Callable[[Any], Any]) -> Any:
        """Run `fn(component)`; the full manager recovers from out-of-memory here (free, lower mode, retry)."""
        with self.use(handle, build) as component:
            return fn(component)

    def unload_all(self) -> None:
        with self._lock:
            self._loaded.clear()

    def stats(self) -> dict[str, Any]:
        return {"device": str(self.device), "loaded": len(self._loaded)}
