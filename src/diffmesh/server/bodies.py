"""Strict reading of request bodies: JSON without non-finite numbers and without deep nesting, and
the structure of an API-format prompt, checked before the executor validates it.

Python's `json` accepts `NaN`, `Infinity` and `1e400` (as inf) and recurses once per nesting
level; either kind of body once reached SQLite and made `/queue` and `/history` fail for every
user (strict JSON encoders refuse non-finite floats). So the parse rejects both, naming the place
(`prompt.1.inputs.seconds`) so a client can fix it.
"""

from __future__ import annotations

import json
import math
from typing import Any

MAX_DEPTH = 64          # a prompt is 5 levels deep; UI workflows in extra_pnginfo reach ~15


class BodyError(ValueError):
    """A body that is not acceptable JSON; `path` names the place (may be empty)."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class _NonFinite:
    """Stands in for a non-finite number during parsing, so the walk can name where it was."""

    def __init__(self, text: str):
        self.text = text


def _parse_float(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parses JSON; raises BodyError for invalid JSON, non-finite numbers or nesting deeper than
    `max_depth`. (`json` itself stops at the interpreter's recursion limit with RecursionError.)"""
    try:
        value = json.loads(raw, parse_constant=_NonFinite, parse_float=_parse_float)
    except RecursionError:
        raise BodyError(f"the JSON body is nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"request body is not valid JSON: {exc}") from None
    bad = find(value, lambda v: isinstance(v, _NonFinite), max_depth)
    if bad is not None:
        path, item = bad
        if isinstance(item, _TooDeep):
            raise BodyError(f"the JSON body is nested more than {max_depth} levels deep (at {_clip(path)})", path)
        raise BodyError(f"non-finite number {item.text} at {path or 'the top level'}: JSON numbers must be "
                        "finite (no NaN, Infinity or values beyond ±1.8e308)", path)
    return value


class _TooDeep:
    """What `find` reports for a container nested deeper than its limit."""


def find(value: Any, predicate, max_depth: int = MAX_DEPTH) -> tuple[str, Any] | None:
    """The first (path, item) in `value` for which `predicate(item)` holds, walking without
    recursion; paths read `a.b[0].c`. A non-empty container deeper than `max_depth` is reported
    as (path, _TooDeep())."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        path, item, depth = stack.pop()
        if predicate(item):
            return path, item
        if depth >= max_depth and isinstance(item, (dict, list)) and item:
            return path, _TooDeep()
        if isinstance(item, dict):
            stack.extend((f"{path}.{k}" if path else str(k), v, depth + 1) for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v, depth + 1) for i, v in reversed(list(enumerate(item))))
    return None


def finite_or_none(value: Any) -> Any:
    """A copy of `value` with non-finite floats replaced by None (for rows an older version
    stored); iterative, so any depth is safe."""
    root: list = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        container, key = stack.pop()
        item = container[key]
        if isinstance(item, float) and not math.isfinite(item):
            container[key] = None
        elif isinstance(item, dict):
            copy = dict(item)
            container[key] = copy
            stack.extend((copy, k) for k in copy)
        elif isinstance(item, list):
            copy = list(item)
            container[key] = copy
            stack.extend((copy, i) for i in range(len(copy)))
    return root[0]


# -- the prompt ---------------------------------------------------------------------------------

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def prompt_shape_error(prompt: Any) -> tuple[str, str] | None:
    """(message, path) for the first structural fault of an API-format prompt, else None.

    ComfyUI's shape: `{node_id: {"class_type": str, "inputs": {name: value}}}`; a list value of an
    input is a link `[node_id, output_index]` (node id a string or integer, index an integer >= 0).
    Other faults (unknown classes, wrong types, dangling links, cycles) are the validator's."""
    if not isinstance(prompt, dict):
        return f"the prompt must be a JSON object of node id → node, got {_kind(prompt)}", "prompt"
    for node_id, node in prompt.items():
        where = f"prompt.{node_id}"
        if not isinstance(node, dict):
            return f"node {node_id} must be an object with class_type and inputs, got {_kind(node)}", where
        if "class_type" in node and not isinstance(node["class_type"], str):
            return (f"class_type of node {node_id} must be a string (a node class name), "
                    f"got {_kind(node['class_type'])}"), f"{where}.class_type"
        inputs = node.get("inputs", {})
        if not isinstance(inputs, dict):
            return f"inputs of node {node_id} must be an object of input name → value, got {_kind(inputs)}", \
                f"{where}.inputs"
        for name, value in inputs.items():
            if isinstance(value, list) and not _is_link(value):
                return (f"input {name!r} of node {node_id} is a list, which means a link, but a link is "
                        f"[node_id, output_index] with an integer index >= 0; got {_short(value)}"), \
                    f"{where}.inputs.{name}"
    return None


def _is_link(value: list) -> bool:
    return (len(value) == 2 and (isinstance(value[0], str) or _is_int(value[0]))
            and _is_int(value[1]) and value[1] >= 0)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _clip(path: str) -> str:
    return path if len(path) <= 120 else path[:60] + "…" + path[-57:]
