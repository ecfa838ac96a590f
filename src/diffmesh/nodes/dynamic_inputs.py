"""ComfyUI's V3 dynamic inputs as plain schema data: Autogrow (a template input repeated under
the names `a`, `b`, ... or `prefix0`, `prefix1`, ...), DynamicCombo (a combo whose selected option
adds its own inputs) and MatchType (any type, matched across inputs and output by the frontend).

In /object_info they are ComfyUI's `["COMFY_AUTOGROW_V3", {"template": ...}]`,
`["COMFY_DYNAMICCOMBO_V3", {"options": [{"key", "inputs"}]}]` and
`["COMFY_MATCHTYPE_V3", {"template": {"template_id", "allowed_types"}}]`. In a prompt the inputs
they add carry dotted names (`values.a`, `format.bit_depth`); `expand` turns a node's declared inputs
into the ones a given prompt entry has (ComfyUI's get_finalized_class_inputs), and `nest` turns the
dotted keyword arguments a node receives into ComfyUI's nested values (`values={"a": ...}`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from diffmesh.nodes.base import InputSpec

AUTOGROW = "COMFY_AUTOGROW_V3"
DYNAMIC_COMBO = "COMFY_DYNAMICCOMBO_V3"
MATCHTYPE = "COMFY_MATCHTYPE_V3"


def _v1_dict(specs: Iterable[InputSpec]) -> dict:
    """ComfyUI's create_input_dict_v1: {"required": {...}, "optional"?: {...}} of `[type, options]`."""
    result: dict[str, dict] = {"required": {}}
    for spec in specs:
        result.setdefault(spec.section, {})[spec.name] = [spec.type, dict(spec.options)]
    return result


def autogrow(name: str, template: InputSpec, *, names: list[str] | None = None, prefix: str | None = None,
             min: int = 1, max: int = 10, **options: Any) -> InputSpec:  # noqa: A002 - ComfyUI's names
    """An Autogrow input: `template` repeated under `names` (TemplateNames) or `prefix` + index
    (TemplatePrefix, `max` of them). A widget template is forced to a socket, as ComfyUI does."""
    if template.type in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
        template = InputSpec(template.name, template.type, {**template.options, "forceInput": True},
                             section=template.section)
    body: dict[str, Any] = {"input": _v1_dict([template])}
    if names is not None:
        body.update(names=list(names), min=min)
    else:
        body.update(prefix=prefix, min=min, max=max)
    return InputSpec(name, AUTOGROW, {**options, "template": body})


def dynamic_combo(name: str, choices: list[tuple[str, tuple[InputSpec, ...]]], **options: Any) -> InputSpec:
    """A DynamicCombo input: each (key, inputs) option adds `inputs` under `<name>.<input>`."""
    body = [{"key": key, "inputs": _v1_dict(specs)} for key, specs in choices]
    return InputSpec(name, DYNAMIC_COMBO, {**options, "options": body})


def match_type(name: str, template_id: str, allowed: str = "*", section: str = "required", **options: Any) -> InputSpec:
    return InputSpec(name, MATCHTYPE, {**options, "template": {"template_id": template_id, "allowed_types": allowed}},
                     section=section)


def _specs(v1: dict, prefix: str, force_optional: bool = False) -> list[InputSpec]:
    return [InputSpec(f"{prefix}.{name}", spec[0], dict(spec[1]) if len(spec) > 1 else {},
                      section="optional" if force_optional else section)
            for section in ("required", "optional") for name, spec in (v1.get(section) or {}).items()]


def _autogrow_names(body: dict) -> list[str]:
    if "names" in body:
        return list(body["names"])
    return [f"{body['prefix']}{i}" for i in range(int(body["max"]))]


def _autogrow_inputs(spec: InputSpec) -> list[InputSpec]:
    """Every input the Autogrow may have: the first `min` keep the template's section, the rest
    are optional."""
    body = spec.options["template"]
    kind = "required" if body["input"].get("required") else "optional"
    template_type, template_options = next(iter(body["input"][kind].values()))[:2]
    result = []
    for index, name in enumerate(_autogrow_names(body)):
        section = kind if index < int(body["min"]) and kind == "required" else "optional"
        result.append(InputSpec(f"{spec.name}.{name}", template_type, dict(template_options), section=section))
    return result


def _combo_option(spec: InputSpec, key: Any) -> dict | None:
    return next((o for o in spec.options["options"] if o["key"] == key), None)


def expand(inputs: Iterable[InputSpec], live: Mapping[str, Any]) -> list[InputSpec]:
    """The inputs a prompt entry with values `live` has: each Autogrow replaced by its possible
    inputs (itself dropped, as ComfyUI does), each DynamicCombo followed by the inputs of the
    option `live` selects (none when the value is missing or no option)."""
    result: list[InputSpec] = []
    for spec in inputs:
        if spec.type == AUTOGROW:
            result += _autogrow_inputs(spec)
        elif spec.type == DYNAMIC_COMBO:
            result.append(spec)
            option = _combo_option(spec, live.get(spec.name))
            if option is not None:
                result += _specs(option["inputs"], spec.name)
        else:
            result.append(spec)
    return result


def find(inputs: Iterable[InputSpec], name: str) -> InputSpec | None:
    """The spec of a dotted dynamic input name (`values.a`, `format.bit_depth`), any option."""
    parent, _, child = name.partition(".")
    for spec in inputs:
        if spec.name != parent:
            continue
        if spec.type == AUTOGROW:
            return next((s for s in _autogrow_inputs(spec) if s.name == name), None)
        if spec.type == DYNAMIC_COMBO:
            for option in spec.options["options"]:
                found = next((s for s in _specs(option["inputs"], parent) if s.name == name), None)
                if found is not None:
                    return found
    return None


def nest(values: Mapping[str, Any], *parents: str) -> dict[str, Any]:
    """`values` with the dotted inputs of `parents` gathered as ComfyUI passes them: an Autogrow
    as {name: value} (empty when none is connected), a DynamicCombo as {parent: key, child: value}."""
    result = {k: v for k, v in values.items() if k.partition(".")[0] not in parents or "." not in k}
    for parent in parents:
        group = {k.partition(".")[2]: v for k, v in values.items() if k.startswith(parent + ".")}
        if parent in values:
            group = {parent: values[parent], **group}
        result[parent] = group
    return result
