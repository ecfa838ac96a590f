"""The composition root: builds every long-lived object once and passes it down (DESIGN rule 4).

`Runtime.build(args)` takes parsed CLI flags (an argparse Namespace, or a dict with the same
names) and builds: Paths -> DeviceConfig -> worker executor -> Engine -> NodeRegistry ->
PromptExecutor. The server and `diffmesh run` both use it; `close()` stops the workers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from diffmesh.config.paths import Paths


def _namespace(args: Any) -> argparse.Namespace:
    if args is None:
        return argparse.Namespace()
    if isinstance(args, dict):
        return argparse.Namespace(**args)
    return args


def build_paths(ns: argparse.Namespace) -> Paths:
    paths = Paths.build(getattr(ns, "base_directory", None), models_dir=getattr(ns, "models_dir", None),
                        input_directory=getattr(ns, "input_directory", None),
                        output_directory=getattr(ns, "output_directory", None),
                        temp_directory=getattr(ns, "temp_directory", None),
                        user_directory=getattr(ns, "user_directory", None),
                        extra_model_paths=getattr(ns, "extra_model_paths_config", None))
    paths.ensure_dirs()
    return paths


def cache_policy(ns: argparse.Namespace) -> tuple[str, int | None]:
    if getattr(ns, "cache_none", False):
        return "none", None
    if getattr(ns, "cache_lru", None):
        return "lru", int(ns.cache_lru)
    return "classic", None


def _main_device(engine: Any) -> str:
    """The torch device of the first worker ("cpu", "cuda:0"): what custom nodes call the device."""
    infos = list(engine.infos.values())
    return str(infos[0].device) if infos else "cpu"


@dataclass
class Runtime:
    paths: Paths
    device_config: Any
    backend: Any                  # the worker executor (diffmesh.executors)
    engine: Any
    registry: Any
    executor: Any                 # the PromptExecutor (what the server calls `runtime.executor`)
    custom_nodes: Any = None      # nodes.custom.LoadReport: the packs, their compatibility layer

    @classmethod
    def build(cls, args: Any = None, *, paths: Paths | None = None, pack_server: Any = None) -> "Runtime":
        """`pack_server` (diffmesh.compat.PackServer) is the server's; it receives the packs'
        routes and web folders."""
        from diffmesh.config.devices import DeviceConfig
        from diffmesh.engine.options import build_engine
        from diffmesh.graph.executor import PromptExecutor
        from diffmesh.nodes.custom import load_into
        from diffmesh.nodes.registry import build_registry

        ns = _namespace(args)
        paths = paths or build_paths(ns)
        device_config = DeviceConfig.from_args(ns)
        specs = device_config.worker_specs()
        backend, engine = build_engine(ns, specs)
        try:
            device_names = engine.device_names()
            registry = build_registry()
            report = load_into(registry, paths, getattr(ns, "custom_nodes_dir", None),
                               bool(getattr(ns, "disable_all_custom_nodes", False)), pack_server=pack_server,
                               device=_main_device(engine))
            registry.device_names = tuple(device_names)
            policy, size = cache_policy(ns)
            options = {"disable_metadata": bool(getattr(ns, "disable_metadata", False)),
                       "preview_method": getattr(ns, "preview_method", None) or "none"}
            executor = PromptExecutor(registry, engine, paths, cache_policy=policy, cache_size=size,
                                      options=options, device_names=device_names)
        except BaseException:
            backend.shutdown()
            raise
        return cls(paths, device_config, backend, engine, registry, executor, report)

    def close(self) -> None:
        self.backend.shutdown()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
