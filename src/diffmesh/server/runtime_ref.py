"""The runtime (registry, engine, executor), built in the background so the API answers at once.

Building the runtime imports torch and the model code, which takes seconds; `/system_stats`,
`/users`, `/settings` and the static frontend do not need it. Routes that do call `get()`,
which waits for the build and turns a failed build into a clear 503.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

log = logging.getLogger("diffmesh.server")


class RuntimeUnavailable(RuntimeError):
    """The runtime failed to build or is not built yet."""


class RuntimeRef:
    def __init__(self, build: Callable[[], Any] | None = None, runtime: Any = None,
                 on_failure: Callable[[BaseException], None] | None = None):
        self._build = build
        self._on_failure = on_failure  # `diffmesh serve` ends the server: no runtime, nothing to serve
        self._runtime = runtime
        self._error: BaseException | None = None
        self._done = threading.Event()
        if runtime is not None or build is None:
            self._done.set()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, runtime: Any) -> "RuntimeRef":
        return runtime if isinstance(runtime, RuntimeRef) else cls(runtime=runtime)

    def start(self) -> None:
        """Starts the background build (once)."""
        if self._done.is_set() or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="diffmesh-runtime-build", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from diffmesh.errors import DiffmeshError

        try:
            self._runtime = self._build()
        except BaseException as exc:  # reported to every caller of get()
            if not isinstance(exc, DiffmeshError):  # ours carry their message and fix; others need the trace
                log.exception("building the runtime failed")
            self._error = exc
        finally:
            self._done.set()
        if self._error is not None and self._on_failure is not None:
            self._on_failure(self._error)

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self._runtime is not None

    def peek(self) -> Any | None:
        """The runtime if built, else None (never waits)."""
        return self._runtime if self._done.is_set() else None

    def get(self, timeout: float | None = 600.0) -> Any:
        self.start()
        if not self._done.wait(timeout):
            raise RuntimeUnavailable("the runtime is still starting; retry in a few seconds")
        if self._error is not None:
            raise RuntimeUnavailable(f"the runtime failed to start: {type(self._error).__name__}: {self._error}"
                                     " (see the server log; check the model folders and device flags)")
        if self._runtime is None:
            raise RuntimeUnavailable("no runtime was configured for this server")
        return self._runtime
