"""Device, memory and precision flags (minimal version; the devices issue completes it).

`add_device_arguments(parser)` adds the flags; `DeviceConfig.from_args(ns)` validates them;
`DeviceConfig.worker_specs()` says which workers to start, one per device.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from diffmesh.executors.base import WorkerSpec


@dataclass
class DeviceConfig:
    cpu: bool = True
    workers: int = 1
    threads_per_worker: int | None = None
    vram_mode: str = "normalvram"

    @classmethod
    def from_args(cls, ns: argparse.Namespace) -> "DeviceConfig":
        return cls(cpu=True, workers=getattr(ns, "workers", 1) or 1,
                   threads_per_worker=getattr(ns, "threads_per_worker", None))

    def worker_specs(self) -> list[WorkerSpec]:
        threads = self.threads_per_worker or (1 if self.workers > 1 else None)
        return [WorkerSpec(worker_id=i, device="cpu", threads=threads, settings={"vram_mode": self.vram_mode})
                for i in range(self.workers)]


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("devices")
    group.add_argument("--cpu", action="store_true", help="run everything on the CPU")
    group.add_argument("--workers", type=int, default=1, help="number of CPU workers with --cpu")
    group.add_argument("--threads-per-worker", type=int, default=None, help="torch threads per CPU worker")
