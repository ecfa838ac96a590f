"""Declarative node definitions: a schema (plain data) plus a small execute function.

`NodeSchema.to_object_info(paths)` generates the exact ComfyUI `/object_info` entry (spec §4, with
the keys current ComfyUI added since: is_input_list, has_intermediate_output, search_aliases,
essentials_category, dev_only), key order included; combo options may be computed from the folder layout (`Paths`) at that time.
`NodeDef` pairs a schema with `execute(ctx, **inputs)` and the optional hooks ComfyUI calls
`IS_CHANGED` and `VALIDATE_INPUTS`. The executor gives every call a `NodeContext`.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Union

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "COMFY_DYNAMICCOMBO_V3"})
HIDDEN_TYPES = frozenset({"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG", "API_KEY_COMFY_ORG"})

Choices = Union[tuple, Callable[["SchemaEnv"], list]]


@dataclass(frozen=True)
class SchemaEnv:
    """What computed combo lists may read: the folder layout and the device names."""

    paths: Any
    device_names: tuple[str, ...] = ()


def as_env(paths_or_env: Any) -> SchemaEnv:
    return paths_or_env if isinstance(paths_or_env, SchemaEnv) else SchemaEnv(paths_or_env)


@dataclass(frozen=True)
class InputSpec:
    """One declared input. `type` is a type string; a legacy combo has `choices` (a tuple, or a
    function of `Paths` evaluated when /object_info or validation needs the list)."""

    name: str
    type: str
    options: dict = field(default_factory=dict)
    choices: Choices | None = None
    section: str = "required"            # "required" | "optional"
    v3: bool = False                     # declared in ComfyUI's V3 schema: /object_info always has options ({})

    @property
    def is_combo(self) -> bool:
        return self.choices is not None or self.type == "COMBO"

    @property
    def is_widget(self) -> bool:
        return (self.is_combo or self.type in WIDGET_TYPES) and not self.options.get("forceInput", False)

    def combo_list(self, env: Any) -> list:
        if self.choices is None:
            return list(self.options.get("options", []))
        return list(self.choices(as_env(env))) if callable(self.choices) else list(self.choices)

    def to_spec(self, paths: Any) -> list:
        """The `[TYPE, options]` form of /object_info (`[TYPE]` without options)."""
        head: Any = self.combo_list(paths) if self.choices is not None else self.type
        return [head, dict(self.options)] if self.options or self.v3 else [head]

    def default(self, paths: Any) -> Any:
        """The value FE uses when a workflow lacks one (spec §7.2)."""
        if "default" in self.options:
            return self.options["default"]
        if self.is_combo:
            values = self.combo_list(paths)
            return values[0] if values else None
        return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(self.type)


@dataclass(frozen=True)
class OutputSpec:
    type: str
    name: str | None = None
    is_list: bool = False


@dataclass(frozen=True)
class NodeSchema:
    name: str
    display_name: str
    category: str
    inputs: tuple[InputSpec, ...] = ()
    outputs: tuple[OutputSpec, ...] = ()
    hidden: tuple[tuple[str, str], ...] = ()       # (input name, HIDDEN type)
    description: str = ""
    output_node: bool = False
    output_tooltips: tuple[str, ...] | None = None
    python_module: str = "nodes"
    input_is_list: bool = False
    deprecated: bool = False
    experimental: bool = False
    # fields of ComfyUI after 0.8.0 (its V1 node_info and V3 schema)
    has_intermediate_output: bool = False
    search_aliases: tuple[str, ...] = ()
    essentials_category: str | None = None    # the node library's Essentials tab
    dev_only: bool = False
    output_matchtypes: tuple[str | None, ...] | None = None   # V3 MatchType outputs' template ids

    def input(self, name: str) -> InputSpec | None:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        if "." in name:                  # an input a V3 dynamic input adds (`values.a`, `format.bit_depth`)
            from diffmesh.nodes.dynamic_inputs import find
            return find(self.inputs, name)
        return None

    def live_inputs(self, values: dict) -> list[InputSpec]:
        """The inputs a prompt entry with `values` has: V3 dynamic inputs (Autogrow, DynamicCombo)
        expanded as ComfyUI expands them; the declared inputs otherwise."""
        if not any(s.type in ("COMFY_AUTOGROW_V3", "COMFY_DYNAMICCOMBO_V3") for s in self.inputs):
            return list(self.inputs)
        from diffmesh.nodes.dynamic_inputs import expand
        return expand(self.inputs, values)

    def section(self, section: str) -> list[InputSpec]:
        return [s for s in self.inputs if s.section == section]

    @property
    def output_types(self) -> list[str]:
        return [o.type for o in self.outputs]

    def to_object_info(self, paths: Any) -> dict[str, Any]:
        """The exact ComfyUI node definition (spec §4.1 key order). `paths` may be a `SchemaEnv`."""
        paths = as_env(paths)
        inputs: dict[str, Any] = {}
        order: dict[str, list[str]] = {}
        for section in ("required", "optional"):
            specs = self.section(section)
            if specs or section == "required":
                inputs[section] = {s.name: s.to_spec(paths) for s in specs}
                order[section] = [s.name for s in specs]
        if self.hidden:
            inputs["hidden"] = dict(self.hidden)
            order["hidden"] = [name for name, _ in self.hidden]
        info: dict[str, Any] = {
            "input": inputs,
            "input_order": order,
            "is_input_list": self.input_is_list,
            "output": [o.type for o in self.outputs],
            "output_is_list": [o.is_list for o in self.outputs],
            "output_name": [o.name or o.type for o in self.outputs],
            "name": self.name,
            "display_name": self.display_name,
            "description": self.description,
            "python_module": self.python_module,
            "category": self.category,
            "output_node": self.output_node,
            "has_intermediate_output": self.has_intermediate_output,
        }
        if self.output_tooltips is not None:
            info["output_tooltips"] = list(self.output_tooltips)
        if self.output_matchtypes is not None:
            info["output_matchtypes"] = list(self.output_matchtypes)
        if self.deprecated:
            info["deprecated"] = True
        if self.experimental:
            info["experimental"] = True
        if self.dev_only:
            info["dev_only"] = True
        info["search_aliases"] = list(self.search_aliases)
        if self.essentials_category is not None:
            info["essentials_category"] = self.essentials_category
        return info


@dataclass(frozen=True)
class NodeDef:
    """A node: schema data plus `execute(ctx, **inputs)`.

    execute returns a tuple of outputs, or a dict with "result" (tuple) and/or "ui" (dict).
    is_changed(paths, **constant_inputs) -> value that joins the cache signature (NaN = always run).
    validate_inputs(paths, **named_constant_inputs) -> True or an error string; the inputs it
    names skip the built-in min/max/combo checks (ComfyUI's VALIDATE_INPUTS).
    not_idempotent: the node id joins the cache signature (outputs are never shared between ids).
    Linked inputs reach is_changed and validate_inputs as None; a `validate_inputs` parameter named
    `input_types` gets {input name: linked output type} and turns the link type check off; with
    **kwargs it gets every input and no input gets the built-in checks (ComfyUI's rules).
    check_lazy_status(ctx, **inputs) -> the names of lazy inputs (`{"lazy": True}`) it needs now;
    unevaluated lazy inputs arrive as None. is_async: execute returns a coroutine (awaited; other
    ready nodes run meanwhile). Any of these hooks may return an awaitable.
    """

    schema: NodeSchema
    execute: Callable[..., Any]
    is_changed: Callable[..., Any] | None = None
    validate_inputs: Callable[..., Any] | None = None
    not_idempotent: bool = False
    check_lazy_status: Callable[..., Any] | None = None
    is_async: bool = False

    @property
    def name(self) -> str:
        return self.schema.name

    def validated_input_names(self) -> list[str]:
        """Input names `validate_inputs` takes (the parameters after `paths`)."""
        if self.validate_inputs is None:
            return []
        params = list(inspect.signature(self.validate_inputs).parameters.values())[1:]
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def validate_takes_all(self) -> bool:
        """`validate_inputs` has **kwargs: it gets every input."""
        if self.validate_inputs is None:
            return False
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.validate_inputs).parameters.values())


class Interrupted(Exception):
    """Raised inside a node when the user interrupts the prompt."""


@dataclass
class NodeContext:
    """What a node's execute function may use. Nodes never touch a device: model work goes
    through `engine`; files through `paths`."""

    engine: Any
    paths: Any
    node_id: str
    prompt: dict
    extra_data: dict
    state: dict                                          # per (node id, class) instance; survives prompts
    options: dict = field(default_factory=dict)          # disable_metadata, preview_method
    on_progress: Callable[[int, int, Any], None] | None = None
    interrupt: threading.Event | None = None

    def check_interrupt(self) -> None:
        if self.interrupt is not None and self.interrupt.is_set():
            raise Interrupted("Processing interrupted")

    def progress(self, value: int, max: int, preview: Any = None) -> None:  # noqa: A002 - ComfyUI's name
        """Report progress (sampler step `value` of `max`); raises `Interrupted` when asked to stop."""
        self.check_interrupt()
        if self.on_progress is not None:
            self.on_progress(int(value), int(max), preview)


# -- small constructors that keep node modules declarative --------------------------------------

def inp(name: str, type_: str, section: str = "required", **options: Any) -> InputSpec:
    """An input of type `type_`; `options` keep their keyword order (it is /object_info's order)."""
    return InputSpec(name=name, type=type_, options=options, section=section)


def combo(name: str, choices: Choices, section: str = "required", **options: Any) -> InputSpec:
    return InputSpec(name=name, type="COMBO", options=options, choices=choices, section=section)


def out(*types: str) -> tuple[OutputSpec, ...]:
    return tuple(OutputSpec(t) for t in types)


SAVE_HIDDEN = (("prompt", "PROMPT"), ("extra_pnginfo", "EXTRA_PNGINFO"))
