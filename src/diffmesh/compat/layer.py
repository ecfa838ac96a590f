"""`CompatLayer`: one runtime's look-alike modules and the import hook that serves them.

The hook is a meta-path finder placed first on `sys.meta_path` only while `active()` is entered
(counted, so overlapping prompts and routes on several threads share one entry). It answers the
module names of `shims.BUILDERS` with module objects built once per layer from its backing
objects, so a pack that imported `comfy.utils` at load time and one that imports it lazily while
its node runs get the same module (and the same exception classes). On the last exit the finder is
removed and the modules leave `sys.modules`; the packs keep their references. Another module that
held one of these names in `sys.modules` (a top-level `nodes` package on sys.path) steps aside
while the layer is active and is put back after. `sys.meta_path` is replaced, not edited in place,
so an import running on another thread never misses a finder.

A name under a shimmed root that the layer does not offer (`comfy.ldm...`, `comfy_extras...`)
fails at once with a ModuleNotFoundError that names the supported subset, instead of Python's bare
"No module named".
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import threading
import types
from pathlib import Path
from typing import Any, Iterator

from diffmesh.compat.modules import DOC
from diffmesh.compat.pack_server import PackServer
from diffmesh.compat.shims import BUILDERS, PACKAGES, ROOTS

class CompatLayer:
    """The compatibility modules of one runtime.

    paths: the runtime's `Paths` (folder_paths reads and extends it); registry: its `NodeRegistry`
    (the `nodes` module's classes); device: the main torch device name ("cpu", "cuda:0");
    server: the `PackServer` that PromptServer.instance forwards to.
    """

    def __init__(self, paths: Any, registry: Any, device: str = "cpu", server: PackServer | None = None):
        self.paths = paths
        self.registry = registry
        self.device = device
        self.server = server if server is not None else PackServer()
        self.server.layer = self
        self.loading_pack: str | None = None        # the pack importing now (names its routes in logs)
        # a real aiohttp, when installed, is never shadowed (packs may use its client too)
        self.real_aiohttp = importlib.util.find_spec("aiohttp") is not None
        self._modules: dict[str, types.ModuleType] = {}
        self._lock = threading.RLock()
        self._depth = 0
        self._stashed: dict[str, types.ModuleType] = {}
        self._finder = _Finder(self)

    @contextlib.contextmanager
    def active(self) -> Iterator["CompatLayer"]:
        """`import comfy`, `folder_paths`, ... work inside this block (any thread)."""
        # sys.meta_path is replaced, never changed in place: an import running meanwhile on
        # another thread iterates the list it started with, so it cannot skip a finder.
        with self._lock:
            if self._depth == 0:
                sys.meta_path = [self._finder] + sys.meta_path
                # another module under one of these names (a top-level `nodes` package on sys.path)
                # steps aside meanwhile: inside, `import nodes` means ComfyUI's
                self._stashed = {name: sys.modules.pop(name) for name in BUILDERS
                                 if self.offers(name) and name in sys.modules
                                 and sys.modules[name] is not self._modules.get(name)}
            self._depth += 1
        try:
            yield self
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    sys.meta_path = [f for f in sys.meta_path if f is not self._finder]
                    for name, module in self._modules.items():
                        if sys.modules.get(name) is module:
                            del sys.modules[name]
                    sys.modules.update(self._stashed)
                    self._stashed = {}

    def module(self, name: str) -> types.ModuleType:
        """The look-alike module `name`, built on first use."""
        with self._lock:
            module = self._modules.get(name)
            if module is None:
                module = self._modules[name] = BUILDERS[name](self)
            return module

    def offers(self, name: str) -> bool:
        if name == "aiohttp" or name.startswith("aiohttp."):
            return not self.real_aiohttp and name in BUILDERS
        return name in BUILDERS

    @property
    def models_dir(self) -> Path:
        """ComfyUI's `models_dir`: the parent of the checkpoints folder."""
        return Path(self.paths.models["checkpoints"][0]).parent


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the layer's modules; refuses other names under the shimmed roots with the reason."""

    def __init__(self, layer: CompatLayer):
        self.layer = layer

    def find_spec(self, fullname: str, path: Any = None, target: Any = None):
        if self.layer.offers(fullname):
            return importlib.util.spec_from_loader(fullname, self, is_package=fullname in PACKAGES)
        root = fullname.partition(".")[0]
        if root in ROOTS and not (root == "aiohttp" and self.layer.real_aiohttp):
            offered = ", ".join(sorted(n for n in BUILDERS if n.partition(".")[0] == root))
            what = f"offers only {offered}" if offered else f"does not offer {root}"
            raise ModuleNotFoundError(f"No module named {fullname!r}: diffmesh's ComfyUI compatibility layer {what} "
                                      f"(the supported names are listed in {DOC})", name=fullname)
        return None

    def create_module(self, spec) -> types.ModuleType:
        return self.layer.module(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        """Built complete by `create_module`."""
