"""Small facts about API-format prompts shared by validation, scheduling and caching (spec §2.1)."""

from __future__ import annotations

from typing import Any


def is_link(value: Any) -> bool:
    """A link is `[source_node_id (str), output_index (int or float)]`; anything else is a constant."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], (int, float)) and not isinstance(value[1], bool))


def unwrap_constant(value: Any) -> Any:
    """Array constants travel wrapped as `{"__value__": [...]}`."""
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def upstream_ids(node: dict) -> list[str]:
    return [v[0] for v in node.get("inputs", {}).values() if is_link(v)]


class ExecutionBlocker:
    """A node output that blocks every node using it (ComfyUI's ExecutionBlocker). With a message,
    each blocked node reports an `execution_error` "Execution Blocked: <message>" and the prompt
    goes on; with None it is blocked silently. Output nodes fed a blocker simply do not run."""

    def __init__(self, message: str | None):
        self.message = message
