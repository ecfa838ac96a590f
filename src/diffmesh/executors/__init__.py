"""Executor backends, chosen by name and imported lazily (see `make_executor`)."""

from __future__ import annotations

import importlib

BACKENDS = {
    "inproc": "diffmesh.executors.inproc:InProcessExecutor",
    "multiproc": "diffmesh.executors.multiproc:MultiProcessExecutor",
    "ray": "diffmesh.executors.ray_actors:RayExecutor",         # needs the `ray` extra
}


def make_executor(name: str, worker_specs, **options):
    """Build the executor `name` over `worker_specs` (one `WorkerSpec` per device)."""
    if name not in BACKENDS:
        from diffmesh.errors import ConfigError
        raise ConfigError(f"unknown executor backend {name!r}", where="--executor",
                          fix=f"choose one of {', '.join(BACKENDS)}")
    module_name, cls_name = BACKENDS[name].split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(worker_specs, **options)
