"""A parallel-strategy request carried by a MODEL handle (set by the `MultiGPU_WorkUnits` node).

`ModelHandle` has no free-form options field, so the request rides on a subclass that adds one
field. The engine reads it with `parallel_request(handle)` and always sends `plain_handle(handle)`
to workers, so a request never makes a worker load a second copy of the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from diffmesh.models.handle import ModelHandle

STRATEGIES = ("auto", "none", "batch", "cfg", "queue")


@dataclass(frozen=True)
class RequestHandle(ModelHandle):
    """A `ModelHandle` plus the parallel strategy a node asked for."""

    parallel: str | None = None


def with_parallel_request(handle: ModelHandle, strategy: str) -> ModelHandle:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {strategy!r}; expected one of {STRATEGIES}")
    return RequestHandle(**_base_fields(handle), parallel=strategy)


def parallel_request(handle: ModelHandle) -> str | None:
    return getattr(handle, "parallel", None)


def plain_handle(handle: ModelHandle) -> ModelHandle:
    """The handle without a request: what workers key their loaded models by."""
    return handle if type(handle) is ModelHandle else ModelHandle(**_base_fields(handle))


def _base_fields(handle: ModelHandle) -> dict:
    return {f.name: getattr(handle, f.name) for f in fields(ModelHandle)}
