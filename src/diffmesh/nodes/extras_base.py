"""Constructors for nodes ComfyUI declares with its V3 schema (`comfy_api.latest.io`), so their
/object_info entries read as ComfyUI's: every input carries an options dict (`{}` when empty),
options in V3's key order (display_name, tooltip, lazy, rawLink, advanced, then default, forceInput,
then the type's own: min/max/step, multiline, options ...), and V3 combos as
`["COMBO", {"multiselect": false, "options": [...]}]`.
"""

from __future__ import annotations

from typing import Any

from diffmesh.nodes.base import InputSpec, NodeDef, NodeSchema, OutputSpec

MAX_RESOLUTION = 16384


def v3(name: str, type_: str, section: str = "required", **options: Any) -> InputSpec:
    """A V3 input of `type_`; `options` keep their keyword order (None values dropped, as ComfyUI's prune_dict)."""
    return InputSpec(name=name, type=type_, options={k: v for k, v in options.items() if v is not None},
                     section=section, v3=True)


def text(name: str, multiline: bool = False, default: str | None = None, section: str = "required",
         tooltip: str | None = None, advanced: bool | None = None, **extra: Any) -> InputSpec:
    """io.String.Input: `multiline` is always present (V3 writes False too)."""
    return v3(name, "STRING", section, tooltip=tooltip, advanced=advanced, default=default, multiline=multiline,
              **extra)


def choice(name: str, options: list | tuple, default: Any = None, section: str = "required",
           tooltip: str | None = None, advanced: bool | None = None, **extra: Any) -> InputSpec:
    """io.Combo.Input: a COMBO with its options inside the dict."""
    return v3(name, "COMBO", section, tooltip=tooltip, advanced=advanced, default=default, multiselect=False,
              options=list(options), **extra)


def outs(*items: str | tuple[str, str]) -> tuple[OutputSpec, ...]:
    """Outputs from "TYPE" or ("TYPE", "display name")."""
    return tuple(OutputSpec(i) if isinstance(i, str) else OutputSpec(i[0], i[1]) for i in items)


def v3_node(name: str, display_name: str, category: str, inputs: tuple, outputs: tuple, execute,
            module: str, **fields: Any) -> NodeDef:
    """A NodeDef of a V3 node; `fields` are further NodeSchema fields or NodeDef hooks."""
    hooks = {k: fields.pop(k) for k in ("check_lazy_status", "validate_inputs", "is_changed", "not_idempotent")
             if k in fields}
    if "search_aliases" in fields:
        fields["search_aliases"] = tuple(fields["search_aliases"])
    schema = NodeSchema(name=name, display_name=display_name, category=category, inputs=tuple(inputs),
                        outputs=tuple(outputs), python_module=module, **fields)
    return NodeDef(schema, execute, **hooks)
