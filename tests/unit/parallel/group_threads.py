"""Run one function per rank on threads joined by a real gloo group (loopback), for the parallel
layers' tests without worker processes."""

from __future__ import annotations

import threading
from typing import Any, Callable

from diffmesh.parallel.cfg import free_port, open_group


def run_group(world: int, fn: Callable[[int, Any], Any], timeout_s: float = 120.0) -> list[Any]:
    """fn(rank, group) on `world` threads; the results by rank (the first error is raised)."""
    init, out, errors = f"tcp://127.0.0.1:{free_port()}", [None] * world, []

    def member(rank: int):
        try:
            out[rank] = fn(rank, open_group(rank, world, init, "test", 30.0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=member, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    if errors:
        raise errors[0]
    return out
