"""Runs queued prompts (spec §5.1), several at once when the engine has several workers (queue
parallel, DESIGN §4).

The loop thread starts a prompt whenever one is pending and `engine.acquire(pending=N,
timeout=0)` lends workers: it marks the prompt running in the store (`dequeue`), runs it on a
thread of its own through the runtime's PromptExecutor with `lease.engine` as the nodes' engine,
stores its history entry (`finish`: once and only once), releases the lease and wakes the loop.
A lone prompt gets every free worker (batch/CFG parallel may apply); with several pending, one
worker each. With one worker, or an engine without leases, prompts run one at a time as before.
`/interrupt` with a prompt id stops that prompt and its leased workers only.

The loop outlives any exception: one raised while starting a prompt fails that prompt (history
entry with an `execution_error` message saying what failed), releases its workers and goes on;
one raised before a prompt was taken is logged and the loop tries again a second later. A result
that cannot be stored is replaced by an error entry with the reason.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from diffmesh.server.events import PromptRun
from diffmesh.server.runtime_ref import RuntimeRef
from diffmesh.server.store import QueueItem, QueueStore, history_entry

log = logging.getLogger("diffmesh.server.dispatcher")


class InterruptFlag(threading.Event):
    """An Event that is also callable (`flag()` is `flag.is_set()`), for either executor style."""

    def __call__(self) -> bool:
        return self.is_set()


@dataclass
class _Active:
    """A running prompt: what the clients see, its interrupt flag and the workers it holds."""

    run: PromptRun
    flag: InterruptFlag
    lease: Any = None                      # engine Lease, or None when the engine has no leases


class Dispatcher:
    def __init__(self, store: QueueStore, runtime: RuntimeRef, hub, server_config):
        self.store = store
        self.runtime = runtime
        self.hub = hub
        self.config = server_config
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._running: dict[str, _Active] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._free = {"unload_models": False, "free_memory": False}

    # -- control (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        recovered = self.store.recover()
        if recovered:
            # Exactly once means once to the end: such a prompt runs again from its start. Files its
            # cut-off attempt saved stay; the re-run saves under new counters (files are created
            # exclusively) and its history entry names only the re-run's files.
            log.info("re-queued %d prompt(s) that were running when the server stopped; each runs again from "
                     "the start (files a cut-off attempt saved stay in the output folder, the re-run saves new "
                     "ones and history lists only those)", recovered)
        self._thread = threading.Thread(target=self._loop, name="diffmesh-dispatcher", daemon=True)
        self._thread.start()
        self.wake()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.interrupt(None)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            threads = list(self._threads.values())
        for thread in threads:
            thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, prompt_id: str | None) -> bool:
        """Interrupts `prompt_id` if it is running, or every running prompt when None (spec §1.2)."""
        with self._lock:
            hits = [a for pid, a in self._running.items() if prompt_id is None or pid == prompt_id]
        for active in hits:
            active.flag.set()
        engines = [a.lease.engine for a in hits if a.lease is not None]
        if hits and len(engines) < len(hits):          # a prompt without a lease: stop every worker
            runtime = self.runtime.peek()
            engines = [getattr(runtime, "engine", None)]
        for engine in engines:
            if engine is not None and hasattr(engine, "interrupt"):
                try:
                    engine.interrupt()
                except Exception:
                    log.exception("engine.interrupt() failed")
        return bool(hits)

    def request_free(self, unload_models: bool, free_memory: bool) -> None:
        with self._lock:
            self._free["unload_models"] |= unload_models
            self._free["free_memory"] |= free_memory
        self.wake()

    def running(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def executing_node(self, sid: str) -> str | None:
        """The node now executing for client `sid`, if one of its prompts is running."""
        with self._lock:
            for active in self._running.values():
                if active.run.client_id == sid and active.run.current_node is not None:
                    return active.run.current_node
        return None

    def queue_status(self) -> dict:
        return {"exec_info": {"queue_remaining": self.store.remaining()}}

    def broadcast_status(self) -> None:
        self.hub.broadcast("status", {"status": self.queue_status()})

    # -- the loop: start prompts while workers are free ----------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._free_pending():
                    if not self.running():          # /free waits until no prompt runs
                        self._apply_free()
                        continue
                elif self._start_next():
                    continue
            except Exception:  # noqa: BLE001 - the loop must outlive any bug; a taken prompt was failed already
                log.exception("the dispatcher loop hit an error; it goes on in a second")
                self._stop.wait(1.0)                # an error that repeats must not spin the loop
                continue
            self._wake.wait(1.0)
            self._wake.clear()

    def _start_next(self) -> bool:
        """Starts the next pending prompt if workers are free for it; False when it cannot."""
        pending = self.store.pending_count()
        if pending == 0:
            return False
        engine = self._engine()
        with self._lock:
            busy = len(self._running)
        if engine is None:
            if busy:                                # no leases: one prompt at a time
                return False
            lease = None
        else:
            if busy >= engine.slots():
                return False
            lease = engine.acquire(pending=pending, timeout=0)
            if lease is None:                       # every worker is busy: wait for a release
                return False
        try:
            item = self.store.dequeue()
        except BaseException:
            if lease is not None:
                lease.release()
            raise
        if item is None:                            # deleted meanwhile
            if lease is not None:
                lease.release()
            return False
        try:
            active = _Active(PromptRun(item, self.hub, self.config), InterruptFlag(), lease)
            thread = threading.Thread(target=self._run, args=(item, active), daemon=True,
                                      name=f"diffmesh-prompt-{item.prompt_id[:8]}")
            with self._lock:
                self._running[item.prompt_id] = active
                self._threads[item.prompt_id] = thread
            thread.start()
        except Exception as exc:  # noqa: BLE001 - the prompt was taken: fail it, give its workers back
            log.exception("prompt %s could not be started", item.prompt_id)
            self._forget(item.prompt_id, lease)
            self._finish(item, failure_entry(item, exc, "the server could not start this prompt"))
        return True

    def _engine(self) -> Any:
        """The engine when it can lend workers (`acquire`), else None. Waits for the runtime build;
        a failed build gives None, and the prompt then fails with the build error as before."""
        try:
            engine = getattr(self.runtime.get(), "engine", None)
        except Exception:
            return None
        return engine if hasattr(engine, "acquire") and hasattr(engine, "slots") else None

    # -- one prompt (its own thread) ------------------------------------------------------------

    def _run(self, item: QueueItem, active: _Active) -> None:
        try:
            self.broadcast_status()
            result = self._execute(active, item)
            entry = active.run.history_entry(result)
        except Exception as exc:  # a bug in the server itself: the prompt is finished as an error
            log.exception("prompt %s failed outside the executor", item.prompt_id)
            entry = failure_entry(item, exc, "the server failed while running this prompt")
        finally:
            self._forget(item.prompt_id, active.lease)
        self._finish(item, entry)
        try:
            self.broadcast_status()
            active.run.send("executing", {"node": None, "prompt_id": item.prompt_id})
        except Exception:  # noqa: BLE001 - the result is stored; a client that misses the end polls /history
            log.exception("could not tell the clients that prompt %s ended", item.prompt_id)

    def _forget(self, prompt_id: str, lease: Any) -> None:
        """The prompt no longer runs: give its workers back and let the loop start the next one."""
        try:
            if lease is not None:
                lease.release()
        finally:
            with self._lock:
                self._running.pop(prompt_id, None)
                self._threads.pop(prompt_id, None)
            self.wake()

    def _finish(self, item: QueueItem, entry: dict) -> None:
        """Store the prompt's history entry once; an entry that cannot be stored is replaced by an
        error entry saying why, so the prompt never stays `running` (and would run again)."""
        try:
            stored = self.store.finish(item.prompt_id, entry)
        except Exception as exc:  # noqa: BLE001 - e.g. a full disk, or a value SQLite/JSON refuses
            log.exception("could not store the result of prompt %s; storing an error instead", item.prompt_id)
            try:
                stored = self.store.finish(item.prompt_id, failure_entry(item, exc, "its result could not be stored"))
            except Exception:  # noqa: BLE001 - the store itself fails: after a restart the prompt runs again
                log.exception("could not store prompt %s at all; it runs again after a restart", item.prompt_id)
                return
        if not stored:
            log.warning("prompt %s was not running any more; its result is dropped", item.prompt_id)

    def _execute(self, active: _Active, item: QueueItem) -> Any:
        run = active.run
        try:
            runtime = self.runtime.get()
            extra = dict(item.extra_data)
            extra.update(item.sensitive)
            extra["preview_method"] = run.preview_method
            execute = runtime.executor.execute
            kwargs = {"outputs_to_execute": item.outputs} if _accepts(execute, "outputs_to_execute") else {}
            if active.lease is not None and _accepts(execute, "engine"):
                kwargs["engine"] = active.lease.engine
            return execute(item.prompt, item.prompt_id, extra, run.sink, active.flag, **kwargs)
        except Exception as exc:
            log.exception("prompt %s raised outside any node", item.prompt_id)
            run.report_crash(exc, traceback.format_exception(exc))
            return None

    def _free_pending(self) -> bool:
        with self._lock:
            return self._free["unload_models"] or self._free["free_memory"]

    def _apply_free(self) -> None:
        with self._lock:
            flags = dict(self._free)
            self._free = {"unload_models": False, "free_memory": False}
        if not (flags["unload_models"] or flags["free_memory"]):
            return
        runtime = self.runtime.peek()
        if runtime is None:
            return
        try:
            engine = getattr(runtime, "engine", None)
            if engine is not None and hasattr(engine, "free"):
                engine.free(unload_models=True)
            executor = getattr(runtime, "executor", None)
            if flags["free_memory"] and executor is not None and hasattr(executor, "reset_cache"):
                executor.reset_cache()
        except Exception:
            log.exception("/free failed")


def failure_entry(item: QueueItem, exc: BaseException, what: str) -> dict:
    """A history entry for a prompt the server itself failed: status error, with ComfyUI's
    `execution_error` message (no node) carrying `what` and the exception."""
    name = (type(exc).__module__ + "." + type(exc).__qualname__).removeprefix("builtins.")
    message = {"prompt_id": item.prompt_id, "node_id": None, "node_type": None, "executed": [],
               "exception_message": f"{what}: {type(exc).__name__}: {exc}", "exception_type": name,
               "traceback": traceback.format_exception(exc), "current_inputs": {}, "current_outputs": [],
               "timestamp": int(time.time() * 1000)}
    return history_entry(item, "error", False, [["execution_error", message]], {}, {})


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
