"""The one narrow seam between the engine and the workers.

Every executor offers `call(worker_id, method, *args, on_event=..., **kwargs) -> Future`: run the
named method of that worker's `Worker` object and get its result, or the error it reported as
data. The same `Worker` class runs in-process, in a child process, or (later) as a Ray actor.
`on_event` receives progress events (dicts) emitted by the worker during the call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to start: its device, its thread budget and the device config."""

    worker_id: int
    device: str                       # "cpu", "cuda:0", "mps", ...
    threads: int | None = None        # torch intra-op threads (CPU workers: 1 each when several)
    settings: dict[str, Any] = field(default_factory=dict)   # plain data: vram mode, budgets, precision


EventCallback = Callable[[dict], None]


class Executor(ABC):
    """Runs `Worker` methods on workers, one worker per device."""

    specs: list[WorkerSpec]

    @abstractmethod
    def start(self) -> None:
        """Start every worker and wait for its ready handshake."""

    @abstractmethod
    def call(self, worker_id: int, method: str, *args: Any, on_event: EventCallback | None = None,
             **kwargs: Any) -> Future:
        """Run `Worker.<method>(*args, **kwargs)` on one worker; the future holds the result or error."""

    @abstractmethod
    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every worker within `timeout` seconds."""

    def worker_ids(self) -> list[int]:
        return [s.worker_id for s in self.specs]

    def is_alive(self, worker_id: int) -> bool:
        return True

    def busy(self, worker_id: int) -> bool:
        return False

    def gone(self, worker_id: int) -> bool:
        """True when the worker is out of service for good (it kept dying and was given up)."""
        return False

    def interrupt(self, worker_ids: list[int] | None = None) -> None:
        """Ask the workers (default: all) to stop their current call at the next step boundary."""

    def __enter__(self) -> "Executor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
