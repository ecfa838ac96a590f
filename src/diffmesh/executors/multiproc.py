"""Multi-process executor: one child process per device, each running the same `Worker`.

Worker hygiene (after vLLM's multiprocess executor):
- start handshake: a child answers "ready" with its pid, device and thread budget, or a start
  error as data; `start()` waits for every child (bounded by `start_timeout`).
- fail safe start: a child that fails to start (or is not ready within `start_timeout`) stops the
  whole start-up: every child is stopped and `start()` raises that child's error, one message.
- liveness watch: a reader thread per child notices EOF on its pipe the moment the child exits;
  the calls it held fail with `WorkerDied` and, if the child had become ready, a replacement is
  started: at once the first time, then after a delay that doubles (`restart_backoff_s`, at most
  `MAX_RESTART_DELAY_S`); after `max_restarts` restarts within `restart_window_s` the worker is
  given up and calls to it fail at once with the reason. A child that dies before it was ready
  (a replacement that cannot start) is not restarted: it would fail the same way. A heartbeat,
  answered by the child's reader thread even during a long call, catches a child that is alive
  but stuck (stopped, deadlocked outside Python): after `hang_timeout_s` without an answer it is
  killed and treated as dead. The child in turn exits when the parent dies (pipe EOF, and a
  parent-pid watchdog).
- bounded shutdown: "stop" message, then terminate, then kill, each step bounded.
- errors as data: a child reports the exception type, message and traceback; the parent raises
  a `DiffmeshError` subclass (`diffmesh.executors.remote`).
- progress events reach `on_event` during the call; `interrupt()` reaches the running call.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

from diffmesh.errors import WorkerDied
from diffmesh.executors.base import EventCallback, Executor, WorkerSpec
from diffmesh.executors.remote import WorkerStartError, dumps, error_from_data, loads

log = logging.getLogger("diffmesh.executors.multiproc")

DEFAULT_WORKER_CLASS = "diffmesh.executors.worker:Worker"
MAX_RESTART_DELAY_S = 30.0


class _Child:
    """One child process, its pipe, and the calls it holds."""

    def __init__(self, spec: WorkerSpec, process, conn):
        self.spec = spec
        self.process = process
        self.conn = conn
        self.info: dict[str, Any] = {}
        self.ready = threading.Event()
        self.start_error: Exception | None = None
        self.dead = False
        self.last_alive = time.monotonic()
        self.pending: dict[int, tuple[Future, EventCallback | None, str]] = {}
        self.lock = threading.Lock()

    @property
    def label(self) -> str:
        return f"worker {self.spec.worker_id} ({self.spec.device})"

    def send(self, message: tuple) -> None:
        data = dumps(message)
        with self.lock:
            self.conn.send_bytes(data)


class MultiProcessExecutor(Executor):
    def __init__(self, specs: list[WorkerSpec], *, start_timeout: float = 120.0, restart: bool = True,
                 worker_class: str = DEFAULT_WORKER_CLASS, heartbeat_s: float = 5.0,
                 hang_timeout_s: float = 300.0, restart_backoff_s: float = 1.0, max_restarts: int = 5,
                 restart_window_s: float = 600.0, **options: Any):
        self.specs = list(specs)
        self.start_timeout = start_timeout
        self.restart = restart
        self.worker_class = worker_class
        self._ctx = multiprocessing.get_context("spawn")
        self._children: dict[int, _Child] = {}
        self._swap = threading.Condition()          # guards _children replacement
        self._ids = itertools.count(1)
        self._closing = False
        self.restarts: dict[int, int] = {s.worker_id: 0 for s in self.specs}
        self.restart_delays: dict[int, list[float]] = {s.worker_id: [] for s in self.specs}
        self.restart_backoff_s = restart_backoff_s
        self.max_restarts = max_restarts
        self.restart_window_s = restart_window_s
        self._restart_times: dict[int, list[float]] = {s.worker_id: [] for s in self.specs}
        self._given_up: dict[int, str] = {}          # worker id -> why it is not restarted any more
        self._started = False                        # start() succeeded: deaths from now on may restart
        self.heartbeat_s = heartbeat_s
        self.hang_timeout_s = hang_timeout_s
        self._stopped = threading.Event()

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Start every child and wait until all are ready. The first that fails (or times out) stops
        the start-up: every child is stopped, none is restarted, and its error is raised."""
        children = [self._spawn(spec) for spec in self.specs]
        failure = self._first_start_failure(children)
        if failure is not None:
            self.shutdown(timeout=5.0)
            raise failure
        self._started = True
        if self.heartbeat_s > 0:
            threading.Thread(target=self._watch, daemon=True, name="diffmesh-liveness").start()

    def _watch(self) -> None:
        """Heartbeat every live child; kill one that stays silent for `hang_timeout_s`."""
        while not self._stopped.wait(self.heartbeat_s):
            for child in list(self._children.values()):
                if child.dead or not child.ready.is_set():
                    continue
                silent = time.monotonic() - child.last_alive
                if silent > self.hang_timeout_s:
                    log.error("%s has not answered for %.0f s; killing it", child.label, silent)
                    child.process.kill()         # the reader sees EOF: calls fail, a replacement starts
                    continue
                try:
                    child.send(("heartbeat", time.monotonic()))
                except OSError:
                    pass

    def _spawn(self, spec: WorkerSpec) -> _Child:
        from diffmesh.executors.child import child_main

        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=child_main, name=f"diffmesh-worker-{spec.worker_id}",
                                    args=(spec, child_conn, os.getpid(), self.worker_class), daemon=True)
        process.start()
        child_conn.close()              # so the child's exit gives EOF here
        child = _Child(spec, process, parent_conn)
        with self._swap:
            self._children[spec.worker_id] = child
            self._swap.notify_all()
        threading.Thread(target=self._read_loop, args=(child,), daemon=True,
                         name=f"diffmesh-reader-{spec.worker_id}").start()
        return child

    def _first_start_failure(self, children: list[_Child]) -> Exception | None:
        """Wait for every child's handshake; the first start error (or timeout), else None."""
        deadline = time.monotonic() + self.start_timeout
        waiting = list(children)
        while waiting:
            for child in [c for c in waiting if c.ready.is_set()]:
                if child.start_error is not None:
                    return child.start_error
                waiting.remove(child)
            if waiting and time.monotonic() > deadline:
                return WorkerStartError(f"no ready message within {self.start_timeout:.0f} s", where=waiting[0].label,
                                        fix="check the worker's log above; raise the start timeout on slow machines")
            if waiting:
                waiting[0].ready.wait(0.05)
        dead = next((c for c in children if c.dead), None)      # ready, then gone before the others were
        if dead is not None:
            return WorkerStartError(f"the process exited with code {dead.process.exitcode} during start-up",
                                    where=dead.label, fix="check the worker's log above")
        return None

    def _await_ready(self, child: _Child) -> None:
        if not child.ready.wait(self.start_timeout):
            self._stop_child(child, 2.0)
            raise WorkerStartError(f"no ready message within {self.start_timeout:.0f} s", where=child.label,
                                   fix="check the worker's log above; raise the start timeout on slow machines")
        if child.start_error is not None:
            raise child.start_error

    def shutdown(self, timeout: float = 10.0) -> None:
        self._closing = True
        self._stopped.set()
        children = list(self._children.values())
        for child in children:
            try:
                child.send(("stop",))
            except OSError:
                pass
        for child in children:
            self._stop_child(child, timeout)
        self._children.clear()

    def _stop_child(self, child: _Child, timeout: float) -> None:
        """Wait for the child to leave, then terminate, then kill: every step bounded."""
        child.process.join(timeout)
        if child.process.is_alive():
            log.warning("%s did not stop within %.1f s; its stacks follow on stderr; terminating",
                        child.label, timeout)
            try:
                os.kill(child.process.pid, signal.SIGUSR1)
                child.process.join(0.5)
            except OSError:
                pass
            child.process.terminate()
            child.process.join(2.0)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(2.0)
        self._fail_pending(child, "the executor shut down")
        child.conn.close()

    # -- the reader: results, events, liveness -----------------------------------------------
    def _read_loop(self, child: _Child) -> None:
        while True:
            try:
                message = loads(child.conn.recv_bytes())
            except (EOFError, OSError):
                self._on_exit(child)
                return
            self._dispatch(child, message)

    def _dispatch(self, child: _Child, message: tuple) -> None:
        kind = message[0]
        child.last_alive = time.monotonic()
        if kind == "ready":
            child.info = message[1]
            child.ready.set()
        elif kind == "start_error":
            child.start_error = error_from_data(message[1])
            child.ready.set()
        elif kind == "event":
            entry = child.pending.get(message[1])
            if entry is not None and entry[1] is not None:
                try:
                    entry[1](message[2])
                except Exception:  # noqa: BLE001 - a failing listener must not kill the reader
                    log.exception("progress listener failed for %s", child.label)
        elif kind in ("result", "error"):
            entry = child.pending.pop(message[1], None)
            if entry is None:
                return
            if kind == "result":
                entry[0].set_result(message[2])
            else:
                entry[0].set_exception(error_from_data(message[2]))

    def _on_exit(self, child: _Child) -> None:
        was_ready = child.ready.is_set() and child.start_error is None
        child.dead = True
        child.process.join(5.0)
        code = child.process.exitcode
        if not child.ready.is_set():
            child.start_error = WorkerStartError(f"the process exited with code {code} before it was ready",
                                                 where=child.label, fix="check the worker's log above")
            child.ready.set()
        self._fail_pending(child, f"the process exited with code {code}")
        if self._closing or not self.restart or not self._started:
            return                   # during start() the failure is start()'s one error
        if not was_ready:          # it would fail the same way again: stop here, and say why
            self._give_up(child.spec.worker_id, f"its process could not start ({child.start_error})")
            return
        delay = self._restart_delay(child.spec.worker_id)
        if delay is None:
            self._give_up(child.spec.worker_id, f"gave up after {self.max_restarts} restarts within "
                                                f"{self.restart_window_s:.0f} s")
            return
        log.warning("%s exited with code %s; starting a replacement in %.1f s", child.label, code, delay)
        self.restarts[child.spec.worker_id] += 1
        self.restart_delays[child.spec.worker_id].append(delay)
        threading.Thread(target=self._replace, args=(child.spec, delay), daemon=True).start()

    def _restart_delay(self, worker_id: int) -> float | None:
        """Seconds to wait before the next restart (0, then doubling), or None past the cap."""
        now = time.monotonic()
        recent = [t for t in self._restart_times[worker_id] if now - t < self.restart_window_s]
        if len(recent) >= self.max_restarts:
            return None
        self._restart_times[worker_id] = recent + [now]
        if not recent:
            return 0.0
        return min(self.restart_backoff_s * 2 ** (len(recent) - 1), MAX_RESTART_DELAY_S)

    def _give_up(self, worker_id: int, why: str) -> None:
        log.error("worker %s is not restarted: %s; its calls fail until the server restarts", worker_id, why)
        with self._swap:
            self._given_up[worker_id] = why
            self._swap.notify_all()

    def _replace(self, spec: WorkerSpec, delay: float) -> None:
        if delay > 0 and self._stopped.wait(delay):
            return                                   # shut down during the wait
        if self._closing:
            return
        try:
            self._await_ready(self._spawn(spec))
        except Exception as exc:  # noqa: BLE001 - its exit gives up the worker; calls then say why
            log.error("could not restart worker %s: %s", spec.worker_id, exc)

    def _fail_pending(self, child: _Child, why: str) -> None:
        while child.pending:
            call_id, (future, _, method) = child.pending.popitem()
            if not future.done():
                future.set_exception(WorkerDied(
                    f"{why} during {method}()", where=child.label,
                    fix="the engine retries the operation once; if it repeats, check memory and the worker log"))

    # -- calls ----------------------------------------------------------------------------------
    def _live_child(self, worker_id: int) -> _Child:
        """The worker's current process, waiting for a replacement to come up if it just died."""
        with self._swap:
            ok = self._swap.wait_for(lambda: worker_id in self._children and not self._children[worker_id].dead
                                     or self._closing or worker_id in self._given_up, timeout=self.start_timeout)
            child = self._children.get(worker_id)
            given_up = self._given_up.get(worker_id)
        if given_up is not None:
            raise WorkerDied(f"not restarted any more: {given_up}", where=f"worker {worker_id}",
                             fix="check memory and the worker log above; restart the server to start it again")
        if self._closing or not ok or child is None:
            raise WorkerDied("no live process", where=f"worker {worker_id}",
                             fix="the executor is shut down or the worker could not restart; see the log")
        if not child.ready.wait(self.start_timeout) or child.start_error is not None:
            raise WorkerDied("the process did not become ready", where=child.label,
                             fix="see the worker's start error in the log")
        return child

    def call(self, worker_id: int, method: str, *args: Any, on_event: EventCallback | None = None,
             **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            child = self._live_child(worker_id)
        except WorkerDied as exc:
            future.set_exception(exc)
            return future
        call_id = next(self._ids)
        child.pending[call_id] = (future, on_event, method)
        try:
            child.send(("call", call_id, method, args, kwargs, on_event is not None))
        except (OSError, ValueError):
            # The reader fails the pending calls when it sees the exit.
            pass
        except Exception as exc:  # noqa: BLE001 - e.g. an argument that cannot be pickled
            child.pending.pop(call_id, None)
            future.set_exception(exc)
        if child.dead:      # it died between the lookup and the registration: fail what it holds
            self._fail_pending(child, "the process exited")
        return future

    def interrupt(self, worker_ids: list[int] | None = None) -> None:
        for wid, child in list(self._children.items()):
            if not child.dead and (worker_ids is None or wid in worker_ids):
                try:
                    child.send(("interrupt",))
                except OSError:
                    pass

    # -- state for the engine and tests --------------------------------------------------------
    def is_alive(self, worker_id: int) -> bool:
        child = self._children.get(worker_id)
        return child is not None and not child.dead and child.ready.is_set() and child.start_error is None

    def busy(self, worker_id: int) -> bool:
        child = self._children.get(worker_id)
        return child is not None and bool(child.pending)

    def gone(self, worker_id: int) -> bool:
        return worker_id in self._given_up

    def pid(self, worker_id: int) -> int | None:
        child = self._children.get(worker_id)
        return None if child is None else child.process.pid

    def worker_info(self, worker_id: int) -> dict[str, Any]:
        child = self._children.get(worker_id)
        return {} if child is None else dict(child.info)
