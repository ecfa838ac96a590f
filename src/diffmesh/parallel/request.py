"""A parallel-strategy request carried by a MODEL handle (set by the `MultiGPU_WorkUnits` node).

The request is the handle's `parallel` field. The engine reads it with `parallel_request(handle)`
and always sends `plain_handle(handle)` to workers, so a request never makes a worker load a
second copy of the same weights.
"""

from __future__ import annotations

from dataclasses import replace

from diffmesh.models.handle import ModelHandle

STRATEGIES = ("auto", "none", "batch", "cfg", "queue")


def with_parallel_request(handle: ModelHandle, strategy: str) -> ModelHandle:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {strategy!r}; expected one of {STRATEGIES}")
    return replace(handle, parallel=strategy)


def parallel_request(handle: ModelHandle) -> str | None:
    return handle.parallel


def plain_handle(handle: ModelHandle) -> ModelHandle:
    """The handle without a request: what workers key their loaded models by."""
    return handle if handle.parallel is None else replace(handle, parallel=None)
