"""A parallel-strategy request carried by a MODEL handle (set by the `MultiGPU_WorkUnits` node).

The request is the handle's `parallel` field: a strategy name, or a `ParallelRequest` when the
node also limits the device count (`max_gpus`) or gives relative speeds (`MultiGPU_Options`).
The engine reads it with `parallel_request(handle)` / `parallel_options(handle)` and always sends
`plain_handle(handle)` to workers, so a request never makes a worker load a second copy of the
same weights.

ComfyUI names devices `gpu:N` (the Nth GPU). diffmesh maps N onto its workers: the Nth worker
whose device is an accelerator, or, on a machine of CPU workers standing in for GPUs, the Nth
worker (`gpu_worker`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from diffmesh.models.handle import ModelHandle

STRATEGIES = ("auto", "none", "batch", "cfg", "queue", "sequence", "patch")


@dataclass(frozen=True)
class ParallelRequest:
    """`strategy` as in STRATEGIES; at most `max_gpus` workers; `speeds` = ((gpu index, relative
    speed), ...) from MultiGPU_Options, replacing the measured speeds of those workers."""

    strategy: str
    max_gpus: int | None = None
    speeds: tuple[tuple[int, float], ...] = ()

    def workers_for(self, workers: Sequence[Any], main_worker: int | None = None) -> list[Any]:
        """The workers the planner may use (objects with worker_id, device, label, speed): speeds
        replaced, then the main worker and the fastest others up to `max_gpus`."""
        chosen = list(workers)
        for index, speed in self.speeds:
            target = gpu_worker(index, chosen)
            if target is not None:
                chosen = [replace(w, speed=float(speed)) if w.worker_id == target else w for w in chosen]
        if self.max_gpus is not None and len(chosen) > self.max_gpus:
            main = [w for w in chosen if w.worker_id == main_worker][:1]
            rest = sorted((w for w in chosen if w.worker_id != main_worker), key=lambda w: -w.speed)
            chosen = (main + rest)[: max(1, self.max_gpus)]
        return chosen


def gpu_worker(index: int, workers: Sequence[Any]) -> int | None:
    """The worker id ComfyUI's `gpu:<index>` means here, or None when there is no such device."""
    accelerators = [w for w in workers if not str(w.device).startswith("cpu")]
    pool = accelerators or list(workers)
    return pool[index].worker_id if 0 <= index < len(pool) else None


def with_parallel_request(handle: ModelHandle, strategy: str, max_gpus: int | None = None,
                          speeds: tuple[tuple[int, float], ...] = ()) -> ModelHandle:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {strategy!r}; expected one of {STRATEGIES}")
    if max_gpus is None and not speeds:
        return replace(handle, parallel=strategy)
    return replace(handle, parallel=ParallelRequest(strategy, max_gpus, tuple(speeds)))


def parallel_request(handle: ModelHandle) -> str | None:
    """The requested strategy name, or None (follow `--parallel`)."""
    request = handle.parallel
    return request.strategy if isinstance(request, ParallelRequest) else request


def parallel_options(handle: ModelHandle) -> ParallelRequest | None:
    """The full request, or None when there is none; a bare strategy becomes a ParallelRequest."""
    request = handle.parallel
    if request is None or isinstance(request, ParallelRequest):
        return request
    return ParallelRequest(request)


def plain_handle(handle: ModelHandle) -> ModelHandle:
    """The handle without a request: what workers key their loaded models by."""
    return handle if handle.parallel is None else replace(handle, parallel=None)
