"""Queue parallel: whole prompts, one per idle worker.

Split: the dispatcher takes a lease (`Engine.acquire`) per prompt; a lease holds one or more
workers exclusively. Run: the prompt's model work goes to its leased workers only. Merge:
nothing to merge — each prompt's outputs are its own. `WorkerPool` is the bookkeeping.
"""

from __future__ import annotations

import threading
from typing import Iterable


class WorkerPool:
    """Which workers are free for a new lease; `take` blocks until enough are free."""

    def __init__(self, worker_ids: Iterable[int]):
        self._all = list(worker_ids)
        self._free = list(self._all)
        self._cond = threading.Condition()

    def take(self, count: int = 1, *, at_least: int = 1, timeout: float | None = None,
             prefer: Iterable[int] = ()) -> list[int]:
        """Up to `count` free workers (at least `at_least`), preferred ids first; [] on timeout."""
        at_least = max(1, min(at_least, count, len(self._all)))
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._free) >= at_least, timeout=timeout):
                return []
            order = [w for w in prefer if w in self._free] + [w for w in self._free if w not in set(prefer)]
            taken = order[:count]
            self._free = [w for w in self._free if w not in taken]
            return taken

    def give(self, worker_ids: Iterable[int]) -> None:
        with self._cond:
            for worker in worker_ids:
                if worker in self._all and worker not in self._free:
                    self._free.append(worker)
            self._free.sort(key=self._all.index)
            self._cond.notify_all()

    def retire(self, worker_ids: Iterable[int]) -> None:
        """Take workers out of service for good: no later lease gets them."""
        with self._cond:
            retired = set(worker_ids)
            self._all = [w for w in self._all if w not in retired]
            self._free = [w for w in self._free if w not in retired]

    def free(self) -> list[int]:
        with self._cond:
            return list(self._free)
