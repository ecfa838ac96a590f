"""In-process executor: one `Worker` per device in this process, calls run on a thread per worker.

Used for a single device (the default) and as the reference the other backends must equal.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from diffmesh.executors.base import EventCallback, Executor, WorkerSpec


class InProcessExecutor(Executor):
    def __init__(self, specs: list[WorkerSpec], **options: Any):
        self.specs = list(specs)
        self._workers: dict[int, Any] = {}
        self._pools: dict[int, ThreadPoolExecutor] = {}

    def start(self) -> None:
        from diffmesh.executors.worker import Worker

        for spec in self.specs:
            self._workers[spec.worker_id] = Worker(spec)
            # One thread per worker serializes its calls, like a device stream would.
            self._pools[spec.worker_id] = ThreadPoolExecutor(1, thread_name_prefix=f"worker{spec.worker_id}")

    def worker(self, worker_id: int):
        return self._workers[worker_id]

    def call(self, worker_id: int, method: str, *args: Any, on_event: EventCallback | None = None,
             **kwargs: Any) -> Future:
        worker = self._workers[worker_id]
        fn = getattr(worker, method)
        if on_event is not None:
            kwargs["emit"] = on_event
        return self._pools[worker_id].submit(fn, *args, **kwargs)

    def interrupt(self, worker_ids: list[int] | None = None) -> None:
        for wid, worker in self._workers.items():
            if worker_ids is None or wid in worker_ids:
                worker.interrupt_flag.set()

    def busy(self, worker_id: int) -> bool:
        return self._pools[worker_id]._work_queue.qsize() > 0 if worker_id in self._pools else False

    def shutdown(self, timeout: float = 10.0) -> None:
        for pool in self._pools.values():
            pool.shutdown(wait=True, cancel_futures=True)
        self._pools.clear()
        self._workers.clear()
