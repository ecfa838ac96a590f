"""Wall time and the worker processes' CPU seconds per sampling step, for the benchmark scripts.

CPU seconds (utime + stime from Linux /proc) change far less than wall time when the machine is
shared, and the busiest worker's CPU time per step bounds from below what a step would take on a
quiet machine (waiting in an exchange is not CPU time)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process in seconds; 0 where it is not a process on this machine."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class WorkerClock:
    """Give `progress` as a sampling run's progress callback: it records the wall time and every
    worker's CPU seconds at each step; started when made (`harness.StepClock` records wall time only)."""

    def __init__(self, engine: Any):
        self.pids = [engine.root.executor.pid(w) for w in engine.root.infos]
        self.marks: list[float] = []
        self.cpu = [self.cpu_now()]
        self.start = time.perf_counter()

    def cpu_now(self) -> list[float]:
        return [cpu_seconds(p) for p in self.pids]

    def progress(self, event: dict) -> None:
        if event.get("type") == "progress":
            self.marks.append(time.perf_counter())
            self.cpu.append(self.cpu_now())

    def step_seconds(self) -> list[float]:
        return [b - a for a, b in zip([self.start] + self.marks, self.marks)]

    def busiest_cpu_per_step(self) -> list[float]:
        return [max(b - a for a, b in zip(before, after)) for before, after in zip(self.cpu, self.cpu[1:])]
