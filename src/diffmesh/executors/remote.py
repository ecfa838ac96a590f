"""Errors and messages that cross the boundary between the parent and a worker process.

A worker never raises across a process boundary: it turns the exception into plain data
(`error_to_data`), and the parent turns that back into a `DiffmeshError` subclass
(`error_from_data`): the same class when it is one of ours, `WorkerError` otherwise, always with
the worker, the original exception type and the remote traceback attached.
Messages are pickled explicitly (`dumps`/`loads`) so tensors travel as bytes, never as shared
memory handles whose lifetime would tie the two processes together.
"""

from __future__ import annotations

import pickle
import traceback as traceback_module
from typing import Any

from diffmesh import errors as errors_module
from diffmesh.errors import DiffmeshError


class WorkerError(DiffmeshError):
    """A worker raised an exception that is not a `DiffmeshError`; carries its type and traceback."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None,
                 exception_type: str = "Exception", traceback: list[str] | None = None):
        super().__init__(message, where=where, fix=fix)
        self.exception_type = exception_type
        self.traceback = traceback or []


class WorkerStartError(DiffmeshError):
    """A worker process did not complete its start handshake."""


def dumps(message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def error_to_data(exc: BaseException, worker: str) -> dict[str, Any]:
    """Plain-data form of `exc`, raised in `worker` (e.g. "worker 1 (cpu)")."""
    data = {"type": type(exc).__name__, "message": str(exc), "where": None, "fix": None,
            "worker": worker, "traceback": traceback_module.format_exception(type(exc), exc, exc.__traceback__)}
    if isinstance(exc, DiffmeshError):
        data.update(message=exc.message, where=exc.where, fix=exc.fix)
    return data


def error_from_data(data: dict[str, Any]) -> DiffmeshError:
    """Rebuild the error a worker reported: our own classes keep their type, others become `WorkerError`."""
    cls = getattr(errors_module, data["type"], None)
    where = data.get("where") or data.get("worker")
    if isinstance(cls, type) and issubclass(cls, DiffmeshError):
        try:
            exc = cls(data["message"], where=where, fix=data.get("fix"))
        except TypeError:       # a subclass with a different constructor (e.g. NodeExecutionError)
            exc = WorkerError(data["message"], where=where, fix=data.get("fix"), exception_type=data["type"])
    else:
        exc = WorkerError(f"{data['type']}: {data['message']}", where=where, fix=data.get("fix"),
                          exception_type=data["type"])
    exc.remote_traceback = data.get("traceback", [])
    exc.worker = data.get("worker")
    return exc
