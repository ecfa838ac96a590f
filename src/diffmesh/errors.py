"""Errors as data: every error names what failed, where, and the fix.

`DiffmeshError.to_dict()` gives a JSON-able form for the server and for worker processes, which
report errors as data instead of raising across process boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class DiffmeshError(Exception):
    """Base class. `where` locates the problem (a file, a node, a flag); `fix` says what to do."""

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.fix = fix

    def __str__(self) -> str:
        text = self.message
        if self.where:
            text = f"{self.where}: {text}"
        if self.fix:
            text = f"{text} ({self.fix})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "message": self.message, "where": self.where, "fix": self.fix}


class ConfigError(DiffmeshError):
    """A flag or config field is invalid or conflicts with another; the CLI exits with status 2."""


class ModelError(DiffmeshError):
    """A model file is missing, unreadable or of an unknown family."""


class WorkflowError(DiffmeshError):
    """A workflow file cannot be parsed or converted."""


class NodeExecutionError(DiffmeshError):
    """A node raised while executing. Carries the node id and class for `execution_error`."""

    def __init__(self, message: str, *, node_id: str, node_type: str, traceback: list[str] | None = None,
                 exception_type: str = "Exception", fix: str | None = None):
        super().__init__(message, where=f"node {node_id} ({node_type})", fix=fix)
        self.node_id = node_id
        self.node_type = node_type
        self.traceback = traceback or []
        self.exception_type = exception_type


class InterruptedError_(DiffmeshError):
    """The prompt was interrupted by the user (`/interrupt`)."""


class DeviceOutOfMemory(DiffmeshError):
    """A device ran out of memory and recovery (offload, lower mode, retry) did not help."""


class WorkerDied(DiffmeshError):
    """A worker process exited or stopped answering while it held a call."""


@dataclass
class ValidationIssue:
    """One entry of ComfyUI's `node_errors[id].errors` list (see the spec §2.3)."""

    type: str
    message: str
    details: str
    extra_info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "details": self.details, "extra_info": self.extra_info}
