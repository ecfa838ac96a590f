"""The node registry: every node definition by class name, and the /object_info it generates."""

from __future__ import annotations

import importlib
from typing import Any, Iterable, Iterator

from diffmesh.nodes.base import NodeDef, SchemaEnv
from diffmesh.nodes.search_fields import with_search_fields

CORE_MODULES = ("loaders", "conditioning", "sampling", "latent", "image", "io", "dit", "text_encoders", "video", "vision", "gligen",
                "latent_batch", "image_extra", "conditioning_extra", "custom_sampler", "controlnet",
                "extras_logic", "extras_math", "extras_images", "extras_string", "extras_resize",
                "extras_mask", "extras_latent", "extras_compose", "extras_filters", "inpaint")
OPTIONAL_MODULES = ("devices",)        # multi-device nodes (SelectModelDevice, MultiGPU_WorkUnits, ...)


class NodeRegistry:
    """Class name -> `NodeDef`, in registration order (which is /object_info's order)."""

    def __init__(self, nodes: Iterable[NodeDef] = (), device_names: Iterable[str] = ()):
        self._nodes: dict[str, NodeDef] = {}
        # Device names offered by the loaders' `device` combo (set by the composition root).
        self.device_names: tuple[str, ...] = tuple(device_names)
        for node in nodes:
            self.add(node)

    def add(self, node: NodeDef) -> None:
        if node.name in self._nodes:
            raise ValueError(f"node class {node.name!r} is registered twice")
        self._nodes[node.name] = node

    def get(self, name: str) -> NodeDef | None:
        return self._nodes.get(name)

    def __getitem__(self, name: str) -> NodeDef:
        return self._nodes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._nodes

    def __iter__(self) -> Iterator[str]:
        return iter(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def names(self) -> list[str]:
        return list(self._nodes)

    def env(self, paths: Any, device_names: Iterable[str] | None = None) -> SchemaEnv:
        return SchemaEnv(paths, tuple(self.device_names if device_names is None else device_names))

    def object_info(self, paths: Any, device_names: Iterable[str] | None = None) -> dict[str, dict]:
        env = self.env(paths, device_names)
        return {name: node.schema.to_object_info(env) for name, node in self._nodes.items()}

    def node_info(self, name: str, paths: Any, device_names: Iterable[str] | None = None) -> dict[str, dict]:
        node = self._nodes.get(name)
        return {} if node is None else {name: node.schema.to_object_info(self.env(paths, device_names))}


def _module_nodes(module) -> list[NodeDef]:
    nodes = list(getattr(module, "NODES", ()))
    extra = getattr(module, "MultiGPU_WorkUnits", None)
    if isinstance(extra, NodeDef) and extra not in nodes:
        nodes.append(extra)
    return [with_search_fields(node) for node in nodes]     # ComfyUI's search aliases and Essentials tab


def build_registry(extra: Iterable[NodeDef] = ()) -> NodeRegistry:
    """Core nodes, then the multi-device nodes when `diffmesh.nodes.devices` is importable."""
    registry = NodeRegistry()
    for name in CORE_MODULES:
        for node in _module_nodes(importlib.import_module(f"diffmesh.nodes.{name}")):
            registry.add(node)
    for name in OPTIONAL_MODULES:
        try:
            module = importlib.import_module(f"diffmesh.nodes.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"diffmesh.nodes.{name}":
                raise
            continue
        for node in _module_nodes(module):
            if node.name not in registry:
                registry.add(node)
    for node in extra:
        registry.add(node)
    return registry
