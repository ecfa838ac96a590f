"""Module objects for the look-alikes: unknown names fail saying where the supported subset is."""

from __future__ import annotations

import types

DOC = "docs/custom_nodes.md"


def new_module(name: str, doc: str, package: bool = False) -> types.ModuleType:
    """An empty module whose unknown attributes fail with the name and where the subset is listed."""
    module = types.ModuleType(name, doc)
    if package:
        module.__path__ = []

    def __getattr__(attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        raise AttributeError(f"module {name!r} has no attribute {attr!r}: diffmesh's ComfyUI compatibility layer "
                             f"does not offer it (the supported names are listed in {DOC})")

    module.__getattr__ = __getattr__
    return module
