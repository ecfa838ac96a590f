"""Runs queued prompts: one worker thread takes the next prompt from the store, runs it through
the runtime's PromptExecutor, stores its history entry and tells the clients (spec §5.1).

The class is the one seam for concurrency: a pool that runs several prompts at once replaces
`Dispatcher` with the same public methods (start, stop, wake, interrupt, request_free,
running, executing_node).
"""

from __future__ import annotations

import logging
import inspect
import threading
import traceback
from typing import Any

from diffmesh.server.events import PromptRun
from diffmesh.server.runtime_ref import RuntimeRef
from diffmesh.server.store import QueueItem, QueueStore, history_entry

log = logging.getLogger("diffmesh.server.dispatcher")


class InterruptFlag(threading.Event):
    """An Event that is also callable (`flag()` is `flag.is_set()`), for either executor style."""

    def __call__(self) -> bool:
        return self.is_set()


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
        self._running: dict[str, tuple[PromptRun, InterruptFlag]] = {}
        self._free = {"unload_models": False, "free_memory": False}

    # -- control (any thread) -----------------------------------------------------------------

    def start(self) -> None:
        recovered = self.store.recover()
        if recovered:
            log.info("re-queued %d prompt(s) that were running when the server stopped", recovered)
        self._thread = threading.Thread(target=self._loop, name="diffmesh-dispatcher", daemon=True)
        self._thread.start()
        self.wake()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.interrupt(None)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def interrupt(self, prompt_id: str | None) -> bool:
        """Interrupts `prompt_id` if it is running, or whatever runs when None (spec §1.2)."""
        with self._lock:
            runs = list(self._running.items())
        hit = False
        for pid, (_, flag) in runs:
            if prompt_id is None or pid == prompt_id:
                flag.set()
                hit = True
        if hit:
            runtime = self.runtime.peek()
            engine = getattr(runtime, "engine", None)
            if engine is not None and hasattr(engine, "interrupt"):
                try:
                    engine.interrupt()
                except Exception:
                    log.exception("engine.interrupt() failed")
        return hit

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
            for run, _ in self._running.values():
                if run.client_id == sid and run.current_node is not None:
                    return run.current_node
        return None

    def queue_status(self) -> dict:
        return {"exec_info": {"queue_remaining": self.store.remaining()}}

    def broadcast_status(self) -> None:
        self.hub.broadcast("status", {"status": self.queue_status()})

    # -- worker thread ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._apply_free()
            item = self.store.dequeue()
            if item is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(item)
            except Exception:  # a bug in the server itself: the prompt is finished as an error
                log.exception("prompt %s failed outside the executor", item.prompt_id)
                self.store.finish(item.prompt_id, history_entry(item, "error", False, [], {}, {}))
                self.broadcast_status()

    def _run(self, item: QueueItem) -> None:
        run = PromptRun(item, self.hub, self.config)
        flag = InterruptFlag()
        with self._lock:
            self._running[item.prompt_id] = (run, flag)
        self.broadcast_status()
        try:
            result = self._execute(run, item, flag)
        finally:
            with self._lock:
                self._running.pop(item.prompt_id, None)
        entry = run.history_entry(result)
        if not self.store.finish(item.prompt_id, entry):
            log.warning("prompt %s was not running any more; its result is dropped", item.prompt_id)
        self.broadcast_status()
        run.send("executing", {"node": None, "prompt_id": item.prompt_id})

    def _execute(self, run: PromptRun, item: QueueItem, flag: InterruptFlag) -> Any:
        try:
            runtime = self.runtime.get()
            extra = dict(item.extra_data)
            extra.update(item.sensitive)
            extra["preview_method"] = run.preview_method
            kwargs = {"outputs_to_execute": item.outputs} if _accepts(runtime.executor.execute, "outputs_to_execute") else {}
            return runtime.executor.execute(item.prompt, item.prompt_id, extra, run.sink, flag, **kwargs)
        except Exception as exc:
            log.exception("prompt %s raised outside any node", item.prompt_id)
            run.report_crash(exc, traceback.format_exception(exc))
            return None

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


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
