"""Prompt validation with ComfyUI's error types, messages and shapes (spec §2.3, §5.5).

`validate_prompt(prompt, registry, env)` -> (ok, error, outputs_to_execute, node_errors). Constants
are coerced in place (INT/FLOAT/STRING/BOOLEAN), so PROMPT and PNG metadata show coerced values.
"""

from __future__ import annotations

import traceback
from typing import Any

from diffmesh.graph.graph_utils import ExecutionBlocker, is_link, unwrap_constant
from diffmesh.graph.node_call import resolve_now
from diffmesh.graph.schedule import DependencyCycleError
from diffmesh.nodes.base import SchemaEnv, as_env

COERCE = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _issue(type_: str, message: str, details: str, extra_info: dict | None = None) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}


def types_compatible(received: Any, expected: Any) -> bool:
    """ComfyUI's link type check: equal, `*`, combo outputs into combos, or comma-union overlap."""
    if received == expected or received == "*" or expected == "*":
        return True
    if "COMFY_MATCHTYPE_V3" in (received, expected):     # matched by the frontend, as in ComfyUI
        return True
    if isinstance(received, (list, tuple)) and (expected == "COMBO" or isinstance(expected, (list, tuple))):
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got, want = set(received.split(",")), set(expected.split(","))
    return "*" in got or "*" in want or bool(got & want)


def exception_type_name(exc: BaseException) -> str:
    module = type(exc).__module__
    return type(exc).__qualname__ if module == "builtins" else f"{module}.{type(exc).__qualname__}"


class _Validator:
    def __init__(self, prompt: dict, registry, env: SchemaEnv):
        self.prompt = prompt
        self.registry = registry
        self.env = env
        self.results: dict[str, tuple[bool, list[dict]]] = {}
        self.active: set[str] = set()

    def node(self, node_id: str) -> tuple[bool, list[dict]]:
        """A node's validity. A link back to a node being validated is a cycle: an error of the
        node that links back (ComfyUI refuses such prompts at validation too)."""
        if node_id in self.results:
            return self.results[node_id]
        if node_id in self.active:
            raise DependencyCycleError(f"Dependency cycle detected: node {node_id} depends on its own output; "
                                       "remove one of the links of the loop", [node_id])
        self.active.add(node_id)
        try:
            result = self._check(node_id)
        finally:
            self.active.discard(node_id)
        self.results[node_id] = result
        return result

    def _check(self, node_id: str) -> tuple[bool, list[dict]]:
        node = self.prompt[node_id]
        definition = self.registry[node["class_type"]]
        schema = definition.schema
        inputs = node.setdefault("inputs", {})
        custom = set(definition.validated_input_names())
        takes_all = definition.validate_takes_all()
        received_types: dict[str, Any] = {}
        errors: list[dict] = []
        valid = True
        for spec in schema.live_inputs(inputs):
            name = spec.name
            info = spec.to_spec(self.env)
            if name not in inputs:
                if spec.section == "required":                 # a dynamic input's details: its last part
                    details = name if schema.input(name) is spec else name.rsplit(".", 1)[-1]
                    errors.append(_issue("required_input_missing", "Required input is missing", details,
                                         {"input_name": name}))
                continue
            value = inputs[name]
            if isinstance(value, list) and not is_link(value):
                errors.append(_issue("bad_linked_input",
                                     "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                                     {"input_name": name, "input_config": info, "received_value": value}))
                continue
            if is_link(value):
                ok = self._check_link(name, spec, info, value, errors, received_types, "input_types" in custom)
                valid = valid and ok
                continue
            self._check_constant(inputs, name, spec, info, value, custom if not takes_all else _ALL, errors)
        if custom or takes_all:
            self._custom(definition, node_id, inputs, custom, takes_all, received_types, errors)
        return (valid and not errors, errors)

    def _check_link(self, name, spec, info, value, errors, received_types, any_type: bool) -> bool:
        source_id, slot = value
        try:
            source = self.prompt[source_id]
            outputs = self.registry[source["class_type"]].schema.output_types
            received = outputs[int(slot)]
            received_types[name] = received
            if not any_type and not types_compatible(received, spec.type):
                details = f"{name}, received_type({received}) mismatch input_type({spec.type})"
                errors.append(_issue("return_type_mismatch", "Return type mismatch between linked nodes", details,
                                     {"input_name": name, "input_config": info, "received_type": received,
                                      "linked_node": value}))
                return True
            return self.node(source_id)[0]
        except Exception as exc:  # noqa: BLE001 - reported as data, like ComfyUI
            errors.append(_issue("exception_during_inner_validation", "Exception when validating inner node",
                                 str(exc), {"input_name": name, "input_config": info,
                                            "exception_message": str(exc), "exception_type": exception_type_name(exc),
                                            "traceback": traceback.format_tb(exc.__traceback__),
                                            "linked_node": value}))
            return True

    def _check_constant(self, inputs, name, spec, info, value, custom, errors) -> None:
        raw = value
        try:
            value = unwrap_constant(value)
            convert = COERCE.get(spec.type)
            if convert is not None and spec.choices is None:
                value = convert(value)
            inputs[name] = value
        except Exception as exc:  # noqa: BLE001
            errors.append(_issue("invalid_input_type", f"Failed to convert an input value to a {spec.type} value",
                                 f"{name}, {raw}, {exc}", {"input_name": name, "input_config": info,
                                                           "received_value": raw, "exception_message": str(exc)}))
            return
        if name in custom:
            return
        options = spec.options
        extra = {"input_name": name, "input_config": info, "received_value": value}
        if "min" in options and _lt(value, options["min"]):
            errors.append(_issue("value_smaller_than_min", f"Value {value} smaller than min of {options['min']}",
                                 name, extra))
            return
        if "max" in options and _lt(options["max"], value):
            errors.append(_issue("value_bigger_than_max", f"Value {value} bigger than max of {options['max']}",
                                 name, extra))
            return
        if spec.is_combo:
            allowed = spec.combo_list(self.env)
            if value not in allowed:
                listing, config = str(allowed), info
                if len(allowed) > 20:
                    listing, config = f"(list of length {len(allowed)})", None
                errors.append(_issue("value_not_in_list", "Value not in list", f"{name}: '{value}' not in {listing}",
                                     {"input_name": name, "input_config": config, "received_value": value}))

    def _custom(self, definition, node_id, inputs, custom, takes_all, received_types, errors) -> None:
        """VALIDATE_INPUTS with the inputs it names (every one with **kwargs): constants as they
        are, linked inputs as None, `input_types` the linked types; anything but True fails each
        input it got, as ComfyUI reports it."""
        schema = definition.schema
        values: dict[str, Any] = {}
        for name, value in inputs.items():
            spec = schema.input(name)
            if is_link(value) and not (spec is not None and spec.options.get("rawLink", False)):
                values[name] = None
            elif spec is not None:
                values[name] = value
        hidden = {"PROMPT": {}, "DYNPROMPT": None, "EXTRA_PNGINFO": None, "UNIQUE_ID": node_id}
        values.update({name: hidden.get(kind) for name, kind in schema.hidden})
        args = {k: v for k, v in values.items() if takes_all or k in custom}
        if "input_types" in custom:
            args["input_types"] = received_types
        result = resolve_now(definition.validate_inputs(self.env.paths, **args))
        if result is True or isinstance(result, ExecutionBlocker):
            return
        for name in args:
            details = f"{name}" if result is False else f"{name} - {result}"
            errors.append(_issue("custom_validation_failed", "Custom validation failed for node", details,
                                 {"input_name": name}))


class _Everything:
    """Stands for "every input" where a set of names is expected (VALIDATE_INPUTS with **kwargs)."""

    def __contains__(self, name: object) -> bool:
        return True


_ALL = _Everything()


def _lt(a: Any, b: Any) -> bool:
    try:
        return a < b
    except TypeError:
        return False


def _prompt_error(type_: str, message: str, details: str) -> dict:
    return {"type": type_, "message": message, "details": details, "extra_info": {}}


def check_classes(prompt: Any, registry) -> dict | None:
    """The whole-prompt errors: not a dict, a node without class_type, an unknown class."""
    if not isinstance(prompt, dict):
        return _prompt_error("invalid_prompt", "Cannot execute because the prompt is not a JSON object.", "")
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return _prompt_error("invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                                 f"Node ID '#{node_id}'")
        if node["class_type"] not in registry:
            return _prompt_error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not exist.",
                                 f"Node ID '#{node_id}'")
    return None


def _ancestors(prompt: dict, node_id: str) -> set[str]:
    seen: set[str] = set()
    stack = [node_id]
    while stack:
        current = stack.pop()
        if current in seen or current not in prompt:
            continue
        seen.add(current)
        stack += [v[0] for v in prompt[current].get("inputs", {}).values() if is_link(v)]
    return seen


def validate_prompt(prompt: Any, registry, env: Any, partial_execution_targets: list[str] | None = None
                    ) -> tuple[bool, dict | None, list[str], dict]:
    env = as_env(env)
    error = check_classes(prompt, registry)
    if error is not None:
        return False, error, [], {}
    outputs = [nid for nid, node in prompt.items() if registry[node["class_type"]].schema.output_node]
    if partial_execution_targets is not None:
        outputs = [nid for nid in outputs if nid in {str(t) for t in partial_execution_targets}]
    if not outputs:
        return False, _prompt_error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}

    validator = _Validator(prompt, registry, env)
    good: list[str] = []
    failures: list[tuple[str, list[dict]]] = []
    node_errors: dict[str, dict] = {}
    for output_id in outputs:
        try:
            ok, reasons = validator.node(output_id)
        except Exception as exc:  # noqa: BLE001 - a validator bug must not kill the server
            reasons = [_issue("exception_during_validation", "Exception when validating node", str(exc),
                              {"exception_type": exception_type_name(exc),
                               "traceback": traceback.format_tb(exc.__traceback__)})]
            ok = False
            validator.results[output_id] = (False, reasons)
        if ok:
            good.append(output_id)
            continue
        failures.append((output_id, reasons))
        for node_id in _ancestors(prompt, output_id):
            node_ok, node_reasons = validator.results.get(node_id, (True, []))
            if node_ok or not node_reasons:
                continue
            entry = node_errors.setdefault(node_id, {"errors": node_reasons, "dependent_outputs": [],
                                                     "class_type": prompt[node_id]["class_type"]})
            entry["dependent_outputs"].append(output_id)
    if not good:
        details = "\n".join(f"{r['message']}: {r['details']}" for _, reasons in failures for r in reasons)
        return False, _prompt_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                    details), [], node_errors
    return True, None, good, node_errors
