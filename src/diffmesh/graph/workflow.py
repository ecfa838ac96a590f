"""Workflow files: API format as is, UI format converted to API format like the frontend does (spec §7).

`load_workflow(path, registry, env)` -> (prompt, extra_data): a UI workflow also becomes
`extra_data["extra_pnginfo"]["workflow"]`, so saved PNGs carry it as ComfyUI's do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffmesh.errors import WorkflowError
from diffmesh.nodes.base import InputSpec, as_env

VIRTUAL_NODES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
MUTED, BYPASSED = 2, 4
SEED_NAMES = ("seed", "noise_seed")


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
    values = node.get("widgets_values")
    result: dict[str, Any] = {}
    if isinstance(values, dict):                      # some node packs save widgets by name
        for spec in schema.inputs:
            if spec.is_widget:
                result[spec.name] = values.get(spec.name, spec.default(env))
        return result
    values = values or []
    for index, name in enumerate(widget_names(list(schema.inputs))):
        if name is None:
            continue
        spec = schema.input(name)
        if index < len(values) and values[index] is not None:
            value = values[index]
        elif spec.section == "optional":
            continue            # e.g. diffmesh's `device` combo in a workflow saved by ComfyUI
        else:
            value = _default(spec, env)
        result[name] = {"__value__": value} if isinstance(value, list) else value
    return result


def _default(spec: InputSpec, env) -> Any:
    try:
        return spec.default(env)
    except (AttributeError, KeyError, OSError):
        return None             # a folder-listed combo without folders: validation reports it


# -- links ---------------------------------------------------------------------------------------

def _links(ui: dict) -> dict[int, tuple]:
    links = {}
    for link in ui.get("links") or []:
        if isinstance(link, dict):                    # version-1 style
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                 link.get("type"))
        elif isinstance(link, list) and len(link) >= 5:
            links[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else None)
    return links


def _compatible(a: Any, b: Any) -> bool:
    return a == b or a == "*" or b == "*" or a in (None, "") or b in (None, "")


def _bypass_input(node: dict, slot: int, requested: Any) -> dict | None:
    """The input of a bypassed node that stands in for its output `slot` (spec §7.3)."""
    inputs = node.get("inputs") or []
    outputs = node.get("outputs") or []
    out_type = outputs[slot].get("type") if slot < len(outputs) else None
    if slot < len(inputs):
        candidate = inputs[slot]
        if _compatible(candidate.get("type"), out_type) and _compatible(candidate.get("type"), requested):
            return candidate
    for candidate in inputs:
        if candidate.get("type") == requested:
            return candidate
    for candidate in inputs:
        if _compatible(candidate.get("type"), requested):
            return candidate
    return None


class _Converter:
    def __init__(self, ui: dict, registry, env):
        self.registry = registry
        self.env = as_env(env)
        self.nodes = {n["id"]: n for n in ui.get("nodes", [])}
        self.links = _links(ui)
        subgraphs = ((ui.get("definitions") or {}).get("subgraphs") or [])
        self.subgraph_ids = {s.get("id") for s in subgraphs}

    def resolve(self, link_id: Any, requested: Any, depth: int = 0) -> tuple[str, Any] | None:
        """("link", [id, slot]) or ("value", v) for the origin of `link_id`; None = drop the input."""
        if link_id is None or link_id not in self.links or depth > 64:
            return None
        origin_id, origin_slot = self.links[link_id][:2]
        origin = self.nodes.get(origin_id)
        if origin is None:
            return None
        if origin.get("type") == "Reroute":
            first = (origin.get("inputs") or [{}])[0]
            return self.resolve(first.get("link"), requested, depth + 1)
        if origin.get("type") == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if origin.get("mode") == BYPASSED:
            stand_in = _bypass_input(origin, origin_slot, requested)
            return None if stand_in is None else self.resolve(stand_in.get("link"), requested, depth + 1)
        return ("link", [str(origin_id), origin_slot])

    def node_inputs(self, node: dict) -> dict[str, Any]:
        definition = self.registry.get(node["type"])
        inputs = widget_values(node, definition.schema, self.env) if definition else {}
        if not definition and isinstance(node.get("widgets_values"), list):
            names = [i["widget"]["name"] for i in node.get("inputs") or [] if i.get("widget")]
            inputs.update(zip(names, node["widgets_values"]))
        for socket in node.get("inputs") or []:
            if socket.get("link") is None:
                continue
            resolved = self.resolve(socket["link"], socket.get("type"))
            if resolved is None:
                continue
            kind, value = resolved
            if kind == "value":
                inputs[socket["name"]] = {"__value__": value} if isinstance(value, list) else value
            else:
                inputs[socket["name"]] = value
        return inputs

    def convert(self) -> dict:
        prompt: dict[str, dict] = {}
        ordered = sorted(self.nodes.values(), key=lambda n: (n.get("order", 0), n["id"]))
        for node in ordered:
            if node.get("type") in self.subgraph_ids:
                raise WorkflowError(f"node {node['id']} is a subgraph; subgraphs are not supported yet",
                                    fix="convert the subgraph back to nodes in the editor before exporting")
            if node.get("type") in VIRTUAL_NODES or node.get("mode") in (MUTED, BYPASSED):
                continue
            definition = self.registry.get(node["type"])
            title = node.get("title") or (definition.schema.display_name if definition else node["type"])
            prompt[str(node["id"])] = {"inputs": self.node_inputs(node), "class_type": node["type"],
                                       "_meta": {"title": title}}
        for entry in prompt.values():                 # links to nodes that were not emitted
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and value[0] not in prompt:
                    del entry["inputs"][name]
        return prompt


def ui_to_api(ui: dict, registry, env: Any = None) -> dict:
    """Convert a UI workflow (litegraph JSON) to an API-format prompt, as the frontend does."""
    if detect_format(ui) != "ui":
        raise WorkflowError("ui_to_api needs a UI workflow with 'nodes' and 'links'")
    return _Converter(ui, registry, env).convert()
