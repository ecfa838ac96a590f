"""The dispatcher loop survives any exception: an error while starting a prompt or while storing
its result is logged, that prompt ends in history as an error with the message, its workers go
back to the pool, and the next prompts run. Real SQLite store, real engine and prompt executor
(two in-process CPU workers); the faults come from subclasses that fail once, as a full disk or a
bug would."""

from __future__ import annotations

import sqlite3
import time

import pytest

from diffmesh.engine.engine import Engine
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.graph.executor import PromptExecutor
from diffmesh.nodes.registry import build_registry
from diffmesh.runtime import Runtime, build_paths
from diffmesh.server.config import ServerConfig
from diffmesh.server.dispatcher import Dispatcher
from diffmesh.server.runtime_ref import RuntimeRef
from diffmesh.server.store import QueueStore
from diffmesh.server.ws import ConnectionHub


class DiskFullOnce(QueueStore):
    """`finish` fails the first time, as SQLite does when the disk is full."""

    failed = False

    def finish(self, prompt_id, entry):
        if not self.failed:
            self.failed = True
            raise sqlite3.OperationalError("database or disk is full")
        return super().finish(prompt_id, entry)


class AcquireFailsOnce(Engine):
    failed = False

    def acquire(self, pending=1, timeout=None):
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the lease bookkeeping")
        return super().acquire(pending, timeout)


def _prompt(seed: int) -> dict:
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64 + 8 * seed, "height": 64,
                                                              "batch_size": 1}},
            "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "f"}}}


@pytest.fixture
def make_dispatcher(tmp_path):
    made = []

    def make(store_class=QueueStore, engine_class=Engine) -> Dispatcher:
        paths = build_paths({"base_directory": str(tmp_path)})
        executor = InProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(2)])
        executor.start()
        engine = engine_class(executor, parallel="auto")
        registry = build_registry()
        runtime = Runtime(paths, None, executor, engine, registry, PromptExecutor(registry, engine, paths))
        store = store_class(tmp_path / "queue.sqlite3")
        dispatcher = Dispatcher(store, RuntimeRef.of(runtime), ConnectionHub({}), ServerConfig())
        made.append((dispatcher, executor))
        return dispatcher

    yield make
    for dispatcher, executor in made:
        dispatcher.stop(5)
        executor.shutdown()


def _queue(dispatcher: Dispatcher, *seeds: int) -> list[str]:
    ids = [f"p{seed}" for seed in seeds]
    for pid, seed in zip(ids, seeds):
        dispatcher.store.enqueue(pid, _prompt(seed), {}, ["2"])
    dispatcher.wake()
    return ids


def _history(dispatcher: Dispatcher, ids: list[str], timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = dispatcher.store.history()
        if all(pid in history for pid in ids) and not dispatcher.running():
            return history
        time.sleep(0.05)
    raise AssertionError(f"not finished: {[pid for pid in ids if pid not in dispatcher.store.history()]}; "
                         f"queue: {dispatcher.store.remaining()} left")


def _error_text(entry: dict) -> str:
    return " ".join(str(data.get("exception_message")) for kind, data in entry["status"]["messages"]
                    if kind == "execution_error")


def test_a_result_that_cannot_be_stored_fails_that_prompt_with_the_message_and_the_next_runs(make_dispatcher):
    dispatcher = make_dispatcher(store_class=DiskFullOnce)
    dispatcher.start()
    (first,) = _queue(dispatcher, 1)
    history = _history(dispatcher, [first])
    assert history[first]["status"]["status_str"] == "error"
    assert "database or disk is full" in _error_text(history[first])
    later = _queue(dispatcher, 2, 3)
    history = _history(dispatcher, later)
    assert all(history[pid]["status"]["completed"] for pid in later)
    assert dispatcher.store.remaining() == 0
    assert sorted(dispatcher.runtime.get().engine.pool.free()) == [0, 1]     # every worker back


def test_an_exception_in_the_loop_is_survived_and_the_prompts_run(make_dispatcher):
    dispatcher = make_dispatcher(engine_class=AcquireFailsOnce)
    dispatcher.start()
    ids = _queue(dispatcher, 1, 2, 3)
    history = _history(dispatcher, ids)
    assert dispatcher.runtime.get().engine.failed
    assert all(history[pid]["status"]["completed"] for pid in ids)
    assert sorted(dispatcher.runtime.get().engine.pool.free()) == [0, 1]
