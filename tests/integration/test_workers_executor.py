"""The multi-process executor: handshake, calls, events, errors as data, death, shutdown.

Real child processes (spawn). `ScriptedWorker` is a real `Worker` with a few extra methods that
let a test make a call slow, emit events or fail; the child imports it from this module.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from diffmesh.errors import InterruptedError_, ModelError, WorkerDied
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.executors.remote import WorkerError
from diffmesh.executors.worker import Worker

WORKER_CLASS = f"{__name__}:ScriptedWorker"


class ScriptedWorker(Worker):
    def steps(self, n: int, delay: float, emit=None) -> int:
        self.interrupt_flag.clear()
        for i in range(n):
            time.sleep(delay)
            self._check_interrupt()
            if emit is not None:
                emit({"type": "progress", "value": i + 1, "max": n})
        return n

    def fail_with(self, kind: str) -> None:
        if kind == "model":
            raise ModelError("no such checkpoint", where="/models/x.safetensors", fix="put the file there")
        raise ZeroDivisionError("division by zero in a worker")

    def exit_now(self, code: int) -> None:
        os._exit(code)

    def freeze(self) -> None:
        os.kill(os.getpid(), signal.SIGSTOP)


class BrokenWorker(Worker):
    def __init__(self, spec):
        raise RuntimeError("this device cannot start")


def specs(n: int) -> list[WorkerSpec]:
    return [WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(n)]


@pytest.fixture(scope="module")
def executor():
    ex = MultiProcessExecutor(specs(2), worker_class=WORKER_CLASS, start_timeout=60)
    ex.start()
    yield ex
    ex.shutdown(timeout=5)


def test_handshake_reports_pid_device_and_one_thread_per_worker(executor):
    for wid in (0, 1):
        info = executor.worker_info(wid)
        assert info["device"] == "cpu" and info["threads"] == 1 and info["pid"] != os.getpid()
        pong = executor.call(wid, "ping").result(timeout=30)
        assert pong["worker_id"] == wid and pong["pid"] == info["pid"] and pong["threads"] == 1


def test_progress_events_reach_the_caller_during_the_call(executor):
    events = []
    assert executor.call(0, "steps", 3, 0.01, on_event=events.append).result(timeout=30) == 3
    assert [e["value"] for e in events] == [1, 2, 3]


def test_worker_errors_come_back_as_diffmesh_errors_with_remote_traceback(executor):
    with pytest.raises(ModelError) as known:
        executor.call(1, "fail_with", "model").result(timeout=30)
    assert known.value.where == "/models/x.safetensors" and known.value.fix == "put the file there"
    with pytest.raises(WorkerError) as other:
        executor.call(1, "fail_with", "other").result(timeout=30)
    assert other.value.exception_type == "ZeroDivisionError"
    assert "worker 1" in str(other.value)
    assert any("fail_with" in line for line in other.value.remote_traceback)
    assert executor.call(1, "ping").result(timeout=30)["worker_id"] == 1     # still serving


def test_interrupt_reaches_a_running_call(executor):
    future = executor.call(0, "steps", 200, 0.02)
    time.sleep(0.3)
    executor.interrupt()
    with pytest.raises(InterruptedError_):
        future.result(timeout=30)


def test_killed_worker_fails_its_call_with_worker_died_and_is_restarted(executor):
    old_pid = executor.pid(1)
    future = executor.call(1, "steps", 500, 0.02)
    time.sleep(0.3)
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(WorkerDied) as died:
        future.result(timeout=30)
    assert "worker 1" in str(died.value) and "steps()" in str(died.value)
    pong = executor.call(1, "ping").result(timeout=60)      # waits for the replacement
    assert pong["pid"] != old_pid and executor.restarts[1] >= 1
    assert executor.call(0, "ping").result(timeout=30)["worker_id"] == 0


def test_worker_that_exits_by_itself_is_detected(executor):
    with pytest.raises(WorkerDied):
        executor.call(0, "exit_now", 3).result(timeout=30)
    assert executor.call(0, "ping").result(timeout=60)["worker_id"] == 0


def test_a_stuck_worker_is_detected_by_heartbeat_killed_and_replaced():
    ex = MultiProcessExecutor(specs(1), worker_class=WORKER_CLASS, heartbeat_s=0.2, hang_timeout_s=2.0)
    ex.start()
    try:
        old_pid = ex.pid(0)
        assert ex.call(0, "steps", 20, 0.2).result(timeout=30) == 20      # 4 s busy, heartbeats answered
        assert ex.restarts[0] == 0
        with pytest.raises(WorkerDied):
            ex.call(0, "freeze").result(timeout=30)
        assert ex.call(0, "ping").result(timeout=60)["pid"] != old_pid
    finally:
        ex.shutdown(timeout=5)


def test_start_error_is_reported_with_the_worker_and_the_cause():
    ex = MultiProcessExecutor(specs(1), worker_class=f"{__name__}:BrokenWorker", start_timeout=60, restart=False)
    with pytest.raises(WorkerError) as err:
        ex.start()
    assert "this device cannot start" in str(err.value) and "worker 0" in str(err.value)
    ex.shutdown(timeout=2)


def test_shutdown_is_bounded_even_when_a_worker_is_busy():
    ex = MultiProcessExecutor(specs(1), worker_class=WORKER_CLASS, start_timeout=60)
    ex.start()
    pid = ex.pid(0)
    future = ex.call(0, "steps", 10_000, 0.05)
    start = time.monotonic()
    ex.shutdown(timeout=1.0)
    assert time.monotonic() - start < 8
    with pytest.raises(WorkerDied):
        future.result(timeout=1)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


PARENT_SCRIPT = """
import sys, time
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.multiproc import MultiProcessExecutor
if __name__ == "__main__":
    ex = MultiProcessExecutor([WorkerSpec(worker_id=0, device="cpu", threads=1)])
    ex.start()
    print(ex.pid(0), flush=True)
    time.sleep(600)
"""


def test_worker_exits_when_its_parent_dies(tmp_path):
    import subprocess
    import sys

    import psutil

    script = tmp_path / "parent.py"
    script.write_text(PARENT_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail("the worker outlived its parent by 15 s")
