"""Custom nodes: Python modules and packages loaded at start-up from `custom_nodes` folders.

Folders: every folder of the `custom_nodes` key of `Paths` (`<base>/custom_nodes/`, plus any that
`extra_model_paths.yaml` adds), then each `--custom-nodes-dir DIR`; `--disable-all-custom-nodes`
loads none. In a folder, each `name.py` file and each `name/` package (with `__init__.py`) is one
module; `__pycache__`, hidden names and names ending in `.disabled` are skipped. A module that fails
to import is logged with its path and the error and skipped: start-up goes on.

Modules follow ComfyUI's V1 convention: a module-level `NODE_CLASS_MAPPINGS` (class name -> class)
and optional `NODE_DISPLAY_NAME_MAPPINGS`. Each class is adapted to a declarative `NodeDef`
(`adapt_v1_class`), so validation, caching, execution and /object_info treat it like a core node;
its `python_module` is `custom_nodes.<name>`. A class whose name is already registered is skipped
with a warning (core nodes cannot be replaced, the first custom module to claim a name keeps it).

Execution follows ComfyUI: `check_lazy_status` for lazy inputs, `async def` functions (awaited),
`{"result": ..., "expand": graph}` expansions, VALIDATE_INPUTS/IS_CHANGED called as
`getattr(cls, name)(**inputs)`. V1 nodes do not get a `NodeContext` argument. While one runs, `ProgressBar` (the shape of
`comfy.utils.ProgressBar`) and `check_interrupt()` reach the running node's context through a
context variable that the adapter sets for the call only.

Packs that import ComfyUI's modules (`comfy.*`, `folder_paths`, `nodes`, `server`,
`comfy_api.latest`) get diffmesh's look-alikes (`diffmesh.compat`): the loader makes them
importable while a pack imports, and the adapters while its nodes run. V3 nodes (`io.ComfyNode`
classes in NODE_CLASS_MAPPINGS, or from `comfy_entrypoint()`) are adapted by `diffmesh.compat.v3`.
A pack's `WEB_DIRECTORY` is recorded for the server (`/extensions/<pack>/...`). A pack that fails
is logged in one line naming the pack, its path and why (the traceback at debug level).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib.util
import inspect
import logging
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from diffmesh.nodes.base import InputSpec, NodeContext, NodeDef, NodeSchema, OutputSpec

log = logging.getLogger("diffmesh.nodes.custom")

MODULE_PREFIX = "custom_nodes"
_RUNNING: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar("diffmesh_v1_node", default=None)


# -- what a V1 node may call while it runs ----------------------------------------------------

def current_context() -> NodeContext | None:
    """The context of the V1 node running in this thread, or None outside a node."""
    return _RUNNING.get()


def check_interrupt() -> None:
    """Raise `Interrupted` when the user asked to stop (ComfyUI's
    `throw_exception_if_processing_interrupted`); nothing outside a node."""
    ctx = _RUNNING.get()
    if ctx is not None:
        ctx.check_interrupt()


def _preview_image(preview: Any) -> Any:
    """What ComfyUI nodes pass as preview: `(format, PIL image, max size or None)` stays a tuple
    (the server sends a full-size one, max size None, as the node's own image in its format, and
    a bounded one as a preview); a bare PIL image is kept; else None."""
    if isinstance(preview, (tuple, list)) and len(preview) >= 3 and hasattr(preview[1], "convert"):
        return (str(preview[0]).upper(), preview[1], preview[2])
    return preview if hasattr(preview, "convert") else None


class ProgressBar:
    """Progress of the running node, reported like a sampler step (`progress` events and, with an
    image, a preview frame). Raises `Interrupted` from `update*` when the user asked to stop."""

    def __init__(self, total: int, node_id: str | None = None):
        self.total = int(total)
        self.current = 0
        self.node_id = node_id
        self._ctx = _RUNNING.get()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total)
        if self._ctx is not None:
            self._ctx.progress(self.current, self.total, _preview_image(preview))

    def update(self, value: int) -> None:
        self.update_absolute(self.current + value)


# -- V1 class -> NodeDef ----------------------------------------------------------------------

def _input_spec(name: str, entry: Any, section: str, cls: type) -> InputSpec:
    """One INPUT_TYPES entry: `(TYPE,)`, `(TYPE, {options})` or `([choices], {options})`."""
    if isinstance(entry, str):
        entry = (entry,)
    if not isinstance(entry, (tuple, list)) or not entry:
        raise TypeError(f"input {name!r} must be a tuple (TYPE, options), got {entry!r}")
    head = entry[0]
    options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if isinstance(head, (list, tuple)):
        initial = tuple(head)

        def choices(env, cls=cls, section=section, name=name, initial=initial) -> list:
            """ComfyUI asks INPUT_TYPES() on every /object_info: lists of files stay current."""
            try:
                fresh = cls.INPUT_TYPES().get(section, {}).get(name)
                return list(fresh[0]) if fresh and isinstance(fresh[0], (list, tuple)) else list(initial)
            except Exception:  # noqa: BLE001 - a node's own failure falls back to the list it gave at load
                return list(initial)

        return InputSpec(name=name, type="COMBO", options=options, choices=choices, section=section)
    return InputSpec(name=name, type=str(head), options=options, section=section)


def _schema(name: str, cls: type, display_name: str, module_name: str) -> NodeSchema:
    declared = cls.INPUT_TYPES()
    if not isinstance(declared, dict):
        raise TypeError(f"INPUT_TYPES() returned {type(declared).__name__}, expected a dict")
    inputs = tuple(_input_spec(k, v, section, cls) for section in ("required", "optional")
                   for k, v in (declared.get(section) or {}).items())
    hidden = tuple((k, str(v[0] if isinstance(v, (tuple, list)) else v))
                   for k, v in (declared.get("hidden") or {}).items())
    types = tuple(getattr(cls, "RETURN_TYPES", ()))
    names = tuple(getattr(cls, "RETURN_NAMES", ()) or ())
    is_list = tuple(getattr(cls, "OUTPUT_IS_LIST", ()) or ())
    outputs = tuple(OutputSpec(list(t) if isinstance(t, (list, tuple)) else t,
                               names[i] if i < len(names) else None,
                               bool(is_list[i]) if i < len(is_list) else False) for i, t in enumerate(types))
    tooltips = getattr(cls, "OUTPUT_TOOLTIPS", None)
    return NodeSchema(name=name, display_name=display_name, category=str(getattr(cls, "CATEGORY", "sd")),
                      inputs=inputs, outputs=outputs, hidden=hidden, description=str(getattr(cls, "DESCRIPTION", "")),
                      output_node=bool(getattr(cls, "OUTPUT_NODE", False)),
                      output_tooltips=tuple(tooltips) if tooltips is not None else None,
                      python_module=module_name, input_is_list=bool(getattr(cls, "INPUT_IS_LIST", False)),
                      deprecated=bool(getattr(cls, "DEPRECATED", False)),
                      experimental=bool(getattr(cls, "EXPERIMENTAL", False)),
                      has_intermediate_output=bool(getattr(cls, "HAS_INTERMEDIATE_OUTPUT", False)),
                      search_aliases=tuple(str(a) for a in getattr(cls, "SEARCH_ALIASES", None) or ()),
                      essentials_category=_optional_str(getattr(cls, "ESSENTIALS_CATEGORY", None)),
                      dev_only=bool(getattr(cls, "DEV_ONLY", False)))


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _class_hook(cls: type, attr: str):
    """(call(**inputs), keyword parameter names, takes **kwargs) of a V1 hook such as IS_CHANGED.
    ComfyUI calls `getattr(cls, attr)(**inputs)`: a classmethod gets the class, a plain function
    set on the class does not (its parameters are all input names)."""
    call = getattr(cls, attr)
    params = list(inspect.signature(call).parameters.values())
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return call, names, any(p.kind == p.VAR_KEYWORD for p in params)


def _is_changed(cls: type, layer=None):
    """IS_CHANGED gets every input (linked ones as None) and the hidden ones, as in ComfyUI."""
    hook, _, _ = _class_hook(cls, "IS_CHANGED")

    def is_changed(paths, **inputs):
        return _running(None, lambda: hook(**inputs), layer)
    return is_changed


def _validate_inputs(cls: type, attr: str = "VALIDATE_INPUTS", layer=None):
    """VALIDATE_INPUTS (V3: validate_inputs) as `validate_inputs(paths, <its parameter names>)`
    (plus **kwargs when it has them): the validator passes the inputs it names (linked ones as
    None, `input_types` the linked types), and those inputs skip the built-in checks."""
    hook, names, var_kw = _class_hook(cls, attr)

    def validate_inputs(paths, **inputs):
        return _running(None, lambda: hook(**inputs), layer)

    param = inspect.Parameter
    params = [param("paths", param.POSITIONAL_OR_KEYWORD)] + [param(n, param.KEYWORD_ONLY) for n in names]
    if var_kw:
        params.append(param("kwargs", param.VAR_KEYWORD))
    validate_inputs.__signature__ = inspect.Signature(params)
    return validate_inputs


def _instance(ctx: NodeContext, cls: type):
    instance = ctx.state.get("v1_instance")
    if instance is None:                           # one object per (node id, class), like ComfyUI
        instance = ctx.state["v1_instance"] = cls()
    return instance


def _active(layer):
    """The compatibility modules importable (a layer's `active()`), or nothing without a layer."""
    return layer.active() if layer is not None else contextlib.nullcontext()


def _running(ctx: NodeContext | None, call, layer=None):
    """call() with `ctx` as the running node's context (None for IS_CHANGED/VALIDATE_INPUTS) and
    the layer's modules importable; a coroutine it returns keeps both while it runs."""
    token = _RUNNING.set(ctx)
    try:
        with _active(layer):
            result = call()
    finally:
        _RUNNING.reset(token)
    if not inspect.iscoroutine(result):
        return result

    async def awaited():
        inner = _RUNNING.set(ctx)
        try:
            with _active(layer):
                return await result
        finally:
            _RUNNING.reset(inner)
    return awaited()


def _execute(cls: type, function: str, layer=None):
    def execute(ctx: NodeContext, **inputs):
        instance = _instance(ctx, cls)
        return _running(ctx, lambda: getattr(instance, function)(**inputs), layer)
    return execute


def _check_lazy_status(cls: type, layer=None):
    def check_lazy_status(ctx: NodeContext, **inputs):
        instance = _instance(ctx, cls)
        return _running(ctx, lambda: instance.check_lazy_status(**inputs), layer)
    return check_lazy_status


def adapt_v1_class(name: str, cls: type, display_name: str | None = None,
                   module_name: str = MODULE_PREFIX, layer=None) -> NodeDef:
    """A `NodeDef` running a ComfyUI V1 node class (INPUT_TYPES, RETURN_TYPES, FUNCTION, ...);
    `layer` (a `diffmesh.compat.CompatLayer`) makes ComfyUI's modules importable while it runs."""
    for attr in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
        if not hasattr(cls, attr):
            raise TypeError(f"{name}: a V1 node class needs {attr}")
    function = str(cls.FUNCTION)
    if not callable(getattr(cls, function, None)):
        raise TypeError(f"{name}: FUNCTION names {function!r}, which the class does not define")
    schema = _schema(name, cls, display_name or name, module_name)
    return NodeDef(schema=schema, execute=_execute(cls, function, layer),
                   is_changed=_is_changed(cls, layer) if hasattr(cls, "IS_CHANGED") else None,
                   validate_inputs=_validate_inputs(cls, layer=layer) if hasattr(cls, "VALIDATE_INPUTS") else None,
                   not_idempotent=bool(getattr(cls, "NOT_IDEMPOTENT", False)),
                   check_lazy_status=_check_lazy_status(cls, layer) if callable(getattr(cls, "check_lazy_status", None))
                   else None,
                   is_async=inspect.iscoroutinefunction(getattr(cls, function)))


# -- finding and importing modules -------------------------------------------------------------

@dataclass
class LoadReport:
    """What start-up loaded: module name -> node class names, and (path, error) of failures;
    `layer` is the compatibility layer the packs were loaded with."""

    loaded: dict[str, list[str]] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    layer: Any = None


def custom_node_dirs(paths: Any, extra_dirs: Iterable[str | Path] | None = None, disabled: bool = False) -> list[Path]:
    """The folders to load from, in order, without repeats."""
    if disabled:
        return []
    folders = list(paths.models.get("custom_nodes", [])) if paths is not None else []
    folders += [Path(d).expanduser().resolve() for d in extra_dirs or ()]
    seen: list[Path] = []
    for folder in folders:
        if folder not in seen:
            seen.append(folder)
    return seen


def module_paths(folder: Path) -> list[Path]:
    """Module files and package folders of one custom_nodes folder, sorted by name."""
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith((".", "__")) or entry.name.endswith(".disabled"):
            continue
        if entry.is_file() and entry.suffix == ".py":
            found.append(entry)
        elif entry.is_dir() and (entry / "__init__.py").is_file():
            found.append(entry)
    return found


def _import(path: Path):
    """Import one module file or package under a name unique to its path."""
    key = MODULE_PREFIX + "_" + re.sub(r"\W", "_", str(path.resolve()))
    if path.is_dir():
        spec = importlib.util.spec_from_file_location(key, path / "__init__.py", submodule_search_locations=[str(path)])
    else:
        spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(key, None)
        raise
    return module


def _v3_nodes(module, name: str) -> list[type]:
    """The node classes of a V3 pack: `await comfy_entrypoint()` → extension → `get_node_list()`."""
    from diffmesh.compat.v3_io import ComfyExtension

    async def nodes() -> list[type]:
        extension = module.comfy_entrypoint()
        if inspect.isawaitable(extension):
            extension = await extension
        if not isinstance(extension, ComfyExtension):
            raise TypeError(f"comfy_entrypoint() returned {type(extension).__name__}, expected a ComfyExtension")
        await extension.on_load()
        found = await extension.get_node_list()
        if not isinstance(found, list):
            raise TypeError("get_node_list() did not return a list of node classes")
        return found
    return asyncio.run(nodes())


def _adapt(name: str, cls: type, display: str | None, module_name: str, layer) -> NodeDef:
    from diffmesh.compat.v3 import adapt_v3_class, is_v3_class

    if is_v3_class(cls):
        return adapt_v3_class(cls, module_name, lambda ctx, call: _running(ctx, call, layer),
                              lambda node, attr: _validate_inputs(node, attr, layer))
    return adapt_v1_class(name, cls, display, module_name, layer)


def _module_node_defs(module, module_name: str, layer=None) -> list[NodeDef]:
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None)
    if mappings is None and callable(getattr(module, "comfy_entrypoint", None)):
        mappings = {cls.__name__: cls for cls in _v3_nodes(module, module_name)}
    if not isinstance(mappings, dict):
        raise TypeError("the module has no NODE_CLASS_MAPPINGS dict and no comfy_entrypoint()")
    display = getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}
    nodes = []
    for name, cls in mappings.items():
        try:
            nodes.append(_adapt(str(name), cls, display.get(name), module_name, layer))
        except Exception as exc:  # noqa: BLE001 - one bad class must not hide its module's others
            log.error("custom node %s in %s skipped: %s", name, module_name, exc)
    return nodes


def _web_directory(module, path: Path) -> Path | None:
    """The pack's WEB_DIRECTORY, relative to the module's folder, when it is a folder."""
    declared = getattr(module, "WEB_DIRECTORY", None)
    if declared is None:
        return None
    folder = (path if path.is_dir() else path.parent) / str(declared)
    return folder.resolve() if folder.is_dir() else None


def _why(exc: BaseException) -> str:
    """One line saying why a pack failed; a ComfyUI name diffmesh lacks is named as such."""
    from diffmesh.compat.modules import DOC
    from diffmesh.compat.shims import BUILDERS

    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, ImportError) and not isinstance(exc, ModuleNotFoundError) and exc.name in BUILDERS:
        text += f" (diffmesh's ComfyUI compatibility layer does not offer it; the supported names are in {DOC})"
    return text.replace("\n", " ")


def _load_pack(registry, layer, path: Path, report: LoadReport) -> None:
    name = path.stem if path.is_file() else path.name
    module_name = f"{MODULE_PREFIX}.{name}"
    started = time.perf_counter()
    layer.loading_pack = name
    try:
        with layer.active():
            module = _import(path)
            nodes = _module_node_defs(module, module_name, layer)
    except Exception as exc:  # noqa: BLE001 - a broken pack is skipped, start-up goes on
        report.failed.append((path, f"{type(exc).__name__}: {exc}"))
        log.error("custom node pack %s skipped: cannot import custom nodes from %s: %s", name, path, _why(exc))
        log.debug("traceback of custom node pack %s:\n%s", name, "".join(traceback.format_exception(exc)).rstrip())
        return
    finally:
        layer.loading_pack = None
    added = []
    for node in nodes:
        if node.name in registry:
            log.warning("custom node %s from %s skipped: a node of that name is already registered", node.name, path)
            continue
        registry.add(node)
        added.append(node.name)
    web = _web_directory(module, path)
    if web is not None:
        layer.server.web_dirs[name] = web
    report.loaded[module_name] = added
    report.seconds[module_name] = time.perf_counter() - started
    log.info("custom nodes from %s: %s%s", path, ", ".join(added) or "none", f" (web: {web})" if web else "")


def load_into(registry, paths: Any, extra_dirs: Iterable[str | Path] | None = None,
              disabled: bool = False, pack_server: Any = None, device: str = "cpu") -> LoadReport:
    """Import every custom node pack and add its nodes to `registry`; failures are logged.
    `pack_server` (a `diffmesh.compat.PackServer`) receives the packs' routes and web folders;
    `device` is what `comfy.model_management.get_torch_device()` answers."""
    from diffmesh.compat import CompatLayer

    from diffmesh.nodes import websocket_image

    layer = CompatLayer(paths, registry, device, pack_server)
    report = LoadReport(layer=layer)
    if not disabled and websocket_image.NODE.name not in registry:   # ComfyUI's default custom node
        registry.add(websocket_image.NODE)
    for folder in custom_node_dirs(paths, extra_dirs, disabled):
        for path in module_paths(folder):
            _load_pack(registry, layer, path, report)
    return report


def add_arguments(parser) -> None:
    """`--custom-nodes-dir` (repeatable) and `--disable-all-custom-nodes`."""
    group = parser.add_argument_group("custom nodes")
    group.add_argument("--custom-nodes-dir", metavar="DIR", action="append", default=None,
                       help="also load custom nodes from DIR (repeatable); BASE/custom_nodes is always searched")
    group.add_argument("--disable-all-custom-nodes", action="store_true",
                       help="load no custom nodes at all")
