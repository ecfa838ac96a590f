"""CFG parallel: the cond half of every guidance evaluation on one worker, the uncond half on
another, exchanged each step through a two-process group.

Backend (`group_backend`): gloo through CPU memory (each prediction is copied to the CPU as fp32,
all-gathered over loopback TCP, and copied back) unless both workers are CUDA devices and torch
has NCCL: then an NCCL group gathers the predictions device to device. The NCCL path has not been
run yet (written on a machine without GPUs); the gloo path is the one the tests and figures cover.

Split: both workers get the same job with `cfg_part` "cond" (rank 0) or "uncond" (rank 1).
Run: each worker evaluates only its half; `CfgExchange` all-gathers the two predictions, so both
workers combine the same pair and step identically. Merge: both end with the same latent;
rank 0's is the result. Groups are standalone `ProcessGroupGloo` objects over a `TCPStore`, not
the process-wide default group, so a worker can belong to several pairs and nothing global is set.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Callable
from urllib.parse import urlparse

import torch

PARTS = ("cond", "uncond")          # rank 0 computes cond, rank 1 uncond


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def group_backend(devices: list[str]) -> str:
    """"nccl" when every member is a CUDA device and torch has NCCL, else "gloo"."""
    import torch.distributed as dist

    if devices and all(str(d).startswith("cuda") for d in devices) and dist.is_nccl_available():
        return "nccl"
    return "gloo"


def open_group(rank: int, world: int, init_method: str, name: str, timeout_s: float, backend: str = "gloo",
               device: str | None = None) -> Any:
    """Join the group `name` at `init_method` ("tcp://host:port"); rank 0 hosts the store.
    `backend` "nccl" needs `device`, this worker's CUDA device (not run yet: see the module doc)."""
    import torch.distributed as dist

    url = urlparse(init_method)
    if url.scheme != "tcp" or not url.port:
        raise ValueError(f"init_method must look like tcp://127.0.0.1:29500, not {init_method!r}")
    timeout = datetime.timedelta(seconds=timeout_s)
    connect = datetime.timedelta(seconds=min(timeout_s, 60.0))     # a partner that never comes: fail soon
    store = dist.TCPStore(url.hostname, url.port, world, rank == 0, timeout=connect)
    prefixed = dist.PrefixStore(name, store)
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))                 # NCCL binds the group to this device
        options = dist.ProcessGroupNCCL.Options()
        options.is_high_priority_stream = False
        options._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, world, options)
    return dist.ProcessGroupGloo(prefixed, rank, world, timeout)


class CfgExchange:
    """`job.exchange` on a worker: `exchange(local_pred) -> (cond_pred, uncond_pred)`.

    An interrupt is decided together: each side sends its stop flag with its prediction and both
    stop at the same exchange, so neither is left waiting for a partner that already left.
    """

    def __init__(self, group: Any, part: str, should_stop: Callable[[], bool] = lambda: False,
                 on_device: bool = False):
        if part not in PARTS:
            raise ValueError(f"cfg_part must be one of {PARTS}, not {part!r}")
        self.group = group
        self.part = part
        self.should_stop = should_stop
        self.on_device = on_device           # NCCL: gather on the device; gloo: through CPU memory

    def __call__(self, local_pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        where = local_pred.device if self.on_device else torch.device("cpu")
        flag = torch.tensor([1.0 if self.should_stop() else 0.0], device=where)
        local = torch.cat([local_pred.detach().to(where, torch.float32).reshape(-1), flag])   # (B*C*H*W + 1,)
        gathered = [torch.empty_like(local) for _ in PARTS]
        self.group.allgather([gathered], [local]).wait()
        if any(t[-1].item() for t in gathered):
            from diffmesh.errors import InterruptedError_

            raise InterruptedError_("interrupted")
        cond, uncond = (t[:-1].view(local_pred.shape).to(local_pred.device, local_pred.dtype) for t in gathered)
        return cond, uncond


@dataclass(frozen=True)
class CfgPair:
    """Two workers joined by the gloo group `group`; `cond` is rank 0."""

    cond: int
    uncond: int
    group: str


def split_cfg(job, pair: CfgPair) -> list[tuple[int, Any]]:
    """The two half-jobs, as (worker id, job)."""
    return [(pair.cond, replace(job, cfg_part="cond", exchange=None)),
            (pair.uncond, replace(job, cfg_part="uncond", exchange=None))]


def merge_cfg(results: list[torch.Tensor]) -> torch.Tensor:
    """Both halves stepped identically; keep rank 0's latent."""
    return results[0]


Call = Callable[..., Future]


class CfgGroups:
    """Engine side: opens one gloo group per worker pair on first use, drops it after a failure."""

    def __init__(self, call: Call, generation: Callable[[int], int] = lambda worker: 0,
                 host: str = "127.0.0.1", timeout_s: float = 600.0,
                 device_of: Callable[[int], str] = lambda worker: "cpu",
                 rendezvous: Callable[[int], str] | None = None):
        self._call = call
        self._generation = generation        # a restarted worker process has lost its groups
        self._device_of = device_of          # picks the backend: NCCL for two CUDA workers
        self._rendezvous = rendezvous        # worker -> "tcp://host:port" on that worker's node
        self._host = host
        self._timeout_s = timeout_s
        self._pairs: dict[tuple[int, int], CfgPair] = {}
        self._count = 0
        self._lock = threading.Lock()

    def pair(self, cond: int, uncond: int) -> CfgPair:
        key = (cond, uncond, self._generation(cond), self._generation(uncond))
        with self._lock:
            return self._pairs.get(key) or self._open(key)

    def _open(self, key: tuple) -> CfgPair:
        cond, uncond = key[:2]
        self._count += 1
        name = f"cfg-{cond}-{uncond}-{self._count}-{os.urandom(3).hex()}"
        # rank 0 hosts the group's store: on its own node when the executor spans machines (Ray)
        init = self._rendezvous(cond) if self._rendezvous else f"tcp://{self._host}:{free_port(self._host)}"
        backend = group_backend([self._device_of(cond), self._device_of(uncond)])
        futures = [self._call(w, "init_process_group", rank, 2, init, name=name, timeout_s=self._timeout_s,
                              backend=backend)
                   for rank, w in enumerate((cond, uncond))]
        for future in futures:
            future.result()
        self._pairs[key] = CfgPair(cond, uncond, name)
        return self._pairs[key]

    def drop(self, pair: CfgPair) -> None:
        """Forget a pair after a failed step; each worker closes its side (errors ignored)."""
        with self._lock:
            for key in [k for k, v in self._pairs.items() if v == pair]:
                del self._pairs[key]
        for worker in (pair.cond, pair.uncond):
            try:
                self._call(worker, "destroy_process_group", pair.group).result(timeout=30)
            except Exception:  # noqa: BLE001 - the worker may be dead or restarting; its group is gone then
                pass
