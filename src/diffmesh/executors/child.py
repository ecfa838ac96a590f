"""The main function of a worker process (the multi-process executor's child side).

Protocol over one duplex pipe, every message a pickled tuple:
  parent -> child: ("call", call_id, method, args, kwargs, wants_events) | ("interrupt",) | ("stop",)
                   | ("heartbeat", t)
  child -> parent: ("ready", info) | ("start_error", error) | ("event", call_id, event)
                   | ("result", call_id, value) | ("error", call_id, error) | ("alive", t)
Calls run one at a time on the main thread; a reader thread takes messages meanwhile, so an
interrupt reaches the running call. The child exits when the parent dies: the pipe reaches EOF,
and a watchdog also compares the parent pid.
"""

from __future__ import annotations

import faulthandler
import importlib
import os
import queue
import signal
import sys
import threading
import time
from typing import Any

from diffmesh.executors.remote import dumps, error_to_data, loads

PARENT_POLL_S = 1.0


def load_class(path: str) -> type:
    """Import "package.module:Class"."""
    module_name, _, cls_name = path.partition(":")
    return getattr(importlib.import_module(module_name), cls_name)


class _Channel:
    """The child's end of the pipe; sends are locked so worker threads may emit events."""

    def __init__(self, conn):
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: tuple) -> None:
        data = dumps(message)
        with self.lock:
            self.conn.send_bytes(data)


def _read_loop(channel: _Channel, calls: "queue.Queue[Any]", worker) -> None:
    """Take messages from the parent until stop or EOF; EOF means the parent is gone."""
    while True:
        try:
            message = loads(channel.conn.recv_bytes())
        except (EOFError, OSError):
            os._exit(0)
        kind = message[0]
        if kind == "call":
            calls.put(message)
        elif kind == "interrupt":
            worker.interrupt_flag.set()
        elif kind == "heartbeat":          # answered here, so a long call does not look like a hang
            channel.send(("alive", message[1]))
        elif kind == "stop":
            calls.put(None)
            return


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent_pid:
            os._exit(0)


def _serve(channel: _Channel, calls: "queue.Queue[Any]", worker, label: str) -> None:
    while True:
        message = calls.get()
        if message is None:
            return
        _, call_id, method, args, kwargs, wants_events = message
        if wants_events:
            kwargs["emit"] = lambda event, _id=call_id: channel.send(("event", _id, event))
        try:
            result = getattr(worker, method)(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes data for the parent
            channel.send(("error", call_id, error_to_data(exc, label)))
            continue
        try:
            channel.send(("result", call_id, result))
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable result
            channel.send(("error", call_id, error_to_data(exc, label)))


def child_main(spec, conn, parent_pid: int, worker_class: str) -> None:
    """Entry point of a worker process: build the worker, say ready, serve calls until stop."""
    if spec.threads:
        # Before torch is imported, so OpenMP starts with this budget.
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
        os.environ["MKL_NUM_THREADS"] = str(spec.threads)
    channel = _Channel(conn)
    label = f"worker {spec.worker_id} ({spec.device})"
    faulthandler.register(signal.SIGUSR1, all_threads=True)     # the parent asks for stacks before it kills
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watch").start()
    try:
        import torch

        if spec.threads:
            torch.set_num_interop_threads(1)
        worker = load_class(worker_class)(spec)
        info = {"pid": os.getpid(), "worker_id": spec.worker_id, "device": spec.device,
                "threads": torch.get_num_threads(), "torch": torch.__version__}
    except BaseException as exc:  # noqa: BLE001 - a start failure is reported, then the process ends
        channel.send(("start_error", error_to_data(exc, label)))
        return
    channel.send(("ready", info))
    calls: queue.Queue = queue.Queue()
    threading.Thread(target=_read_loop, args=(channel, calls, worker), daemon=True, name="reader").start()
    _serve(channel, calls, worker, label)
    # Leave without running destructors: a gloo group or store torn down at interpreter exit can
    # wait for a partner that is leaving too. Everything the worker holds dies with the process.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
