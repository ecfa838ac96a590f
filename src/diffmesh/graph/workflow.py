"""Workflow files: API format as is, UI format converted to API format like the frontend does (spec §7).

`load_workflow(path, registry, env)` -> (prompt, extra_data): a UI workflow also becomes
`extra_data["extra_pnginfo"]["workflow"]`, so saved PNGs carry it as ComfyUI's do.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

from diffmesh.errors import WorkflowError
from diffmesh.graph.dynamic_prompts import expand
from diffmesh.graph.subgraphs import BYPASSED, MUTED, VIRTUAL_NODES, Placed, Resolver, Scope, subgraph_scopes
from diffmesh.nodes.base import WIDGET_TYPES, InputSpec, as_env

SEED_NAMES = ("seed", "noise_seed")
# widgets the frontend queues but never saves in a workflow, with the value it queues
UNSAVED_WIDGETS = {"IMAGECOMPARE": ["", ""]}


def detect_format(data: Any) -> str:
    """"api" or "ui"; raises WorkflowError for anything else."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data:
        return "ui"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        return "api-wrapped"
    raise WorkflowError("not a ComfyUI workflow: expected an API-format prompt ({node_id: {class_type, inputs}}) "
                        "or a UI workflow ({nodes: [...], links: [...]})",
                        fix="export the workflow from ComfyUI with 'Save' or 'Export (API)'")


def load_workflow(path: str | Path, registry, env: Any) -> tuple[dict, dict]:
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"workflow file not found: {path}", fix="pass the path of a workflow .json file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WorkflowError(f"{path} is not valid JSON: {exc}", fix="check the file is a ComfyUI workflow export") from exc
    kind = detect_format(data)
    if kind == "ui":
        return ui_to_api(data, registry, env), {"extra_pnginfo": {"workflow": data}}
    if kind == "api-wrapped":
        return data["prompt"], dict(data.get("extra_data") or {})
    return data, {}


# -- widgets -------------------------------------------------------------------------------------

def widget_names(inputs: list[InputSpec]) -> list[str | None]:
    """Names of the FE widgets in order; None marks FE-only extras (control, filter, upload)."""
    ordered = [s for s in inputs if s.section == "required"] + [s for s in inputs if s.section == "optional"]
    names: list[str | None] = []
    upload = False
    for spec in ordered:
        if not spec.is_widget:
            continue
        names.append(spec.name)
        control = spec.options.get("control_after_generate") or (spec.type == "INT" and spec.name in SEED_NAMES)
        if control and spec.is_combo:
            names += [None, None]                     # control_after_generate + control_filter_list
        elif control and spec.type in ("INT", "FLOAT"):
            names.append(None)
        upload = upload or any(spec.options.get(k) for k in ("image_upload", "video_upload", "animated_image_upload"))
    if upload:
        names.append(None)                            # the upload button's value ("image")
    return names


def widget_values(node: dict, schema, env) -> dict[str, Any]:
    """Widget name -> value of a UI node, from its `widgets_values` (raw values: lists unwrapped)."""
    values = node.get("widgets_values")
    result: dict[str, Any] = {}
    if isinstance(values, dict):                      # some node packs save widgets by name
        for spec in schema.inputs:
            if spec.is_widget:
                result[spec.name] = values.get(spec.name, spec.default(env))
        return result
    values = values or []
    for index, name in enumerate(_saved_widget_names(node, schema, len(values))):
        if name is None:
            continue
        spec = schema.input(name)
        if index < len(values) and values[index] is not None:
            result[name] = values[index]
        elif spec.section != "optional":              # e.g. diffmesh's `device` combo in a ComfyUI workflow
            result[name] = _default(spec, env)
    for spec in schema.inputs:                        # e.g. Compare Images' compare_view
        if spec.type in UNSAVED_WIDGETS and spec.name not in result:
            result[spec.name] = list(UNSAVED_WIDGETS[spec.type])
    return result


def _saved_widget_names(node: dict, schema, saved: int) -> list[str | None]:
    """The names behind `widgets_values` positions. Frontends before the widget-socket rework
    created a widget for a `forceInput` input and converted it to a socket at once, so its value
    sits in `widgets_values` too; such a workflow shows it as an input with a `widget` field and
    a list one value longer per such input."""
    inputs = list(schema.inputs)
    names = widget_names(inputs)
    dynamic = [s.name for s in inputs if s.type == "COMFY_DYNAMICCOMBO_V3" and s.name in names]
    if dynamic and isinstance(node.get("widgets_values"), list):    # V3 DynamicCombo: the selected
        values = node["widgets_values"]                             # option's widgets follow its value
        inputs = schema.live_inputs({n: values[names.index(n)] for n in dynamic if names.index(n) < len(values)})
        names = widget_names(inputs)
    converted = {s.get("widget", {}).get("name") for s in node.get("inputs") or [] if isinstance(s.get("widget"), dict)}
    forced = [s for s in inputs if s.options.get("forceInput") and (s.is_combo or s.type in WIDGET_TYPES)
              and s.name in converted]
    if not forced:
        return names
    legacy = widget_names([dataclasses.replace(s, options={k: v for k, v in s.options.items() if k != "forceInput"})
                           if s in forced else s for s in inputs])
    return legacy if saved >= len(legacy) > len(names) else names


def _default(spec: InputSpec, env) -> Any:
    try:
        return spec.default(env)
    except (AttributeError, KeyError, OSError):
        return None             # a folder-listed combo without folders: validation reports it


def _boxed(value: Any) -> Any:
    """List values are wrapped so the server does not read them as links (the frontend does this)."""
    return {"__value__": value} if isinstance(value, list) else value


def _meta(node: dict, title: str) -> dict:
    """`_meta` as the frontend writes it: the title, and the node pack's registry ids when saved."""
    meta = {"title": title}
    properties = node.get("properties") or {}
    for key in ("cnr_id", "aux_id", "ver"):
        if isinstance(properties.get(key), str) and properties[key]:
            meta[key] = properties[key]
    return meta


class _Widgets:
    """Widget values and specs of UI nodes, per node (the converter's and the resolver's view)."""

    def __init__(self, registry, env, rng: random.Random):
        self.registry = registry
        self.env = env
        self.rng = rng

    def spec(self, node: dict, name: str) -> InputSpec | None:
        definition = self.registry.get(node.get("type"))
        return definition.schema.input(name) if definition else None

    def own(self, node: dict) -> dict[str, Any]:
        definition = self.registry.get(node.get("type"))
        if definition:
            return widget_values(node, definition.schema, self.env)
        if isinstance(node.get("widgets_values"), list):     # unknown type: the sockets name the widgets
            names = [i["widget"]["name"] for i in node.get("inputs") or [] if isinstance(i.get("widget"), dict)]
            return dict(zip(names, node["widgets_values"]))
        return {}

    def value(self, placed: Placed, name: str) -> Any:
        return self.own(placed.node).get(name)

    def has_control(self, placed: Placed, name: str) -> bool:
        spec = self.spec(placed.node, name)
        return spec is not None and None in widget_names([spec])

    def serialized(self, node: dict, name: str, value: Any) -> Any:
        """A widget's value as the frontend queues it: dynamic prompts expanded where the spec asks."""
        spec = self.spec(node, name)
        if isinstance(value, str) and spec is not None and spec.options.get("dynamicPrompts"):
            return expand(value, self.rng)
        return value


class _Converter:
    def __init__(self, ui: dict, registry, env, rng: random.Random):
        self.registry = registry
        self.root = Scope.of(ui)
        self.widgets = _Widgets(registry, as_env(env), rng)
        self.resolver = Resolver(subgraph_scopes(ui), self.widgets)

    def node_inputs(self, placed: Placed) -> dict[str, Any]:
        node = placed.node
        inputs = {name: _boxed(self.widgets.serialized(node, name, value))
                  for name, value in self.widgets.own(node).items()}
        for index, socket in enumerate(placed.inputs):
            resolved = self.resolver.resolve_input(placed, index)
            if resolved is None:
                continue
            kind, value = resolved
            if kind == "value" and self._from_primitive(placed, index):   # written into the widget first
                value = self.widgets.serialized(node, socket["name"], value)
            inputs[socket["name"]] = value if kind == "link" else _boxed(value)
        return inputs

    def _from_primitive(self, placed: Placed, index: int) -> bool:
        link = placed.scope.links.get(placed.inputs[index].get("link"))
        origin = placed.scope.nodes.get(link[0]) if link else None
        return origin is not None and origin.get("type") == "PrimitiveNode"

    def executable(self) -> list[Placed]:
        """Nodes in the order the frontend emits them: top level by `order`, instances expanded."""
        placed: list[Placed] = []
        for node in sorted(self.root.nodes.values(), key=lambda n: (n.get("order", 0), str(n["id"]))):
            top = Placed(node, self.root)
            if self.resolver.instance_scope(node) is None:
                placed.append(top)
            elif node.get("mode") not in (MUTED, BYPASSED):
                placed += self.resolver.inner_nodes(top)
        return [p for p in placed if p.node.get("type") not in VIRTUAL_NODES and p.node.get("mode") not in (MUTED, BYPASSED)]

    def convert(self) -> dict:
        prompt: dict[str, dict] = {}
        for placed in self.executable():
            node = placed.node
            definition = self.registry.get(node["type"])
            title = node.get("title") or (definition.schema.display_name if definition else node["type"])
            prompt[placed.id] = {"inputs": self.node_inputs(placed), "class_type": node["type"],
                                 "_meta": _meta(node, title)}
        for entry in prompt.values():                 # links to nodes that were not emitted
            for name, value in list(entry["inputs"].items()):
                if _is_link(value) and value[0] not in prompt:
                    del entry["inputs"][name]
        return prompt


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def ui_to_api(ui: dict, registry, env: Any = None, rng: random.Random | None = None) -> dict:
    """Convert a UI workflow (litegraph JSON) to an API-format prompt, as the frontend does.
    `rng` draws the `{a|b}` dynamic-prompt choices (unseeded by default, as in the frontend)."""
    if detect_format(ui) != "ui":
        raise WorkflowError("ui_to_api needs a UI workflow with 'nodes' and 'links'")
    return _Converter(ui, registry, env, rng or random.Random()).convert()
