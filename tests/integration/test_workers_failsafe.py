"""Workers fail safe: a worker that cannot start stops the whole start-up with one message and
leaves no process behind; only workers that had become ready are restarted, with a growing delay,
and a worker that keeps dying is given up after a cap instead of being restarted for ever.

Real child processes (spawn); the worker classes below are real `Worker`s imported by the child."""

from __future__ import annotations

import logging
import os
import signal
import time

import psutil
import pytest

from diffmesh.errors import WorkerDied
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.executors.remote import WorkerError
from diffmesh.executors.worker import Worker


class FailsOnWorkerOne(Worker):
    def __init__(self, spec):
        if spec.worker_id == 1:
            raise RuntimeError("device 1 cannot start")
        super().__init__(spec)


def specs(n: int) -> list[WorkerSpec]:
    return [WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(n)]


def _our_children() -> list[psutil.Process]:
    """Live child processes of this test process, except multiprocessing's resource tracker (started
    with the first spawned child, it lives as long as this process)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:
            pass
    return found


def _gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Those of `pids` still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    return alive


def test_a_worker_that_fails_to_start_stops_start_up_with_one_message_and_leaves_no_process(caplog):
    before = {p.pid for p in _our_children()}
    ex = MultiProcessExecutor(specs(3), worker_class=f"{__name__}:FailsOnWorkerOne", start_timeout=60)
    with caplog.at_level(logging.WARNING, logger="diffmesh.executors"), pytest.raises(WorkerError) as err:
        ex.start()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []   # the raised error only
    message = str(err.value)
    assert "device 1 cannot start" in message and "worker 1" in message
    assert "worker 0" not in message and "worker 2" not in message     # one message, about the one that failed
    time.sleep(1.0)                                # a replacement, if one were started, would be up by now
    left = [p.pid for p in _our_children() if p.pid not in before]
    assert _gone(left) == [], "worker processes left behind after a failed start"
    assert ex.restarts == {0: 0, 1: 0, 2: 0}       # nothing was restarted


def _wait_until(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays_then_given_up():
    ex = MultiProcessExecutor(specs(1), start_timeout=60, restart_backoff_s=0.2, max_restarts=2, heartbeat_s=0)
    ex.start()
    try:
        pids = []
        for _ in range(3):
            pids.append(ex.call(0, "ping").result(timeout=60)["pid"])     # waits for a replacement
            os.kill(pids[-1], signal.SIGKILL)
            _wait_until(lambda: not ex.is_alive(0))
        assert len(set(pids)) == 3 and ex.restarts[0] == 2
        assert ex.restart_delays[0] == [0.0, 0.2]                        # the second restart waited
        started = time.monotonic()
        with pytest.raises(WorkerDied) as died:
            ex.call(0, "ping").result(timeout=60)
        assert time.monotonic() - started < 30                           # refused, not waited for
        assert "gave up after 2 restarts" in str(died.value) and "worker 0" in str(died.value)
        time.sleep(1.0)
        assert not ex.is_alive(0) and ex.restarts[0] == 2                 # and no third restart
    finally:
        ex.shutdown(timeout=5)


def test_a_given_up_worker_is_lent_to_no_prompt_and_the_others_go_on():
    from diffmesh.engine.engine import Engine

    ex = MultiProcessExecutor(specs(2), start_timeout=60, max_restarts=0, heartbeat_s=0)
    ex.start()
    try:
        engine = Engine(ex, parallel="auto")
        os.kill(ex.pid(0), signal.SIGKILL)
        _wait_until(lambda: not ex.is_alive(0))
        _wait_until(lambda: ex.gone(0))
        leases = [engine.acquire(pending=2, timeout=0) for _ in range(2)]
        assert leases[0].worker_ids == [1] and leases[1] is None        # worker 0 is never lent again
        assert leases[0].engine.free() is None                          # and the lent one works
        leases[0].release()
        alone = engine.acquire(pending=1, timeout=0)                    # a lone prompt: every usable worker
        assert alone.worker_ids == [1]
        alone.release()
        assert engine.describe()["workers"][0]["alive"] is False
    finally:
        ex.shutdown(timeout=5)
