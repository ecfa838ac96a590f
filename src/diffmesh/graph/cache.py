"""Output cache keyed by input signature, and node instance state keyed by (id, class) (spec §5.4).

A node's signature covers its class, its IS_CHANGED value, its constants and, through links,
everything upstream; node ids do not matter (except for not-idempotent nodes), so the same
subgraph under new ids hits the cache. Policies: "classic" keeps only the current prompt's
entries, "lru" keeps the last N outputs across prompts, "none" caches nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from diffmesh.graph.graph_utils import is_link

POLICIES = ("classic", "lru", "none")


def to_hashable(value: Any) -> Any:
    if isinstance(value, dict):
        return ("__dict__",) + tuple(sorted((str(k), to_hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(to_hashable(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return ("__unhashable__", id(value))
    return value


def _ancestry(prompt: dict, node_id: str) -> dict[str, int]:
    """Ancestors of node_id, depth first through inputs in sorted name order, numbered by first visit."""
    order: dict[str, int] = {}

    def visit(current: str) -> None:
        inputs = prompt[current].get("inputs", {})
        for name in sorted(inputs):
            value = inputs[name]
            if is_link(value) and value[0] in prompt and value[0] not in order:
                order[value[0]] = len(order)
                visit(value[0])

    visit(node_id)
    return order


def _immediate(prompt: dict, node_id: str, order: dict[str, int], changed: dict[str, Any],
               keyed_by_id: set[str]) -> tuple:
    node = prompt[node_id]
    parts: list[Any] = [node.get("class_type"), changed.get(node_id, False)]
    if node_id in keyed_by_id:
        parts.append(node_id)
    inputs = node.get("inputs", {})
    for name in sorted(inputs):
        value = inputs[name]
        if is_link(value) and value[0] in prompt:
            parts.append((name, ("ANCESTOR", order[value[0]], value[1])))
        else:
            parts.append((name, to_hashable(value)))
    return tuple(parts)


def compute_signatures(prompt: dict, changed: dict[str, Any], keyed_by_id: set[str]) -> dict[str, tuple]:
    """node id -> signature for every node of the prompt."""
    signatures = {}
    for node_id in prompt:
        order = _ancestry(prompt, node_id)
        parts = [_immediate(prompt, node_id, order, changed, keyed_by_id)]
        parts += [_immediate(prompt, ancestor, order, changed, keyed_by_id) for ancestor in order]
        signatures[node_id] = tuple(parts)
    return signatures


@dataclass
class CacheEntry:
    outputs: list[list[Any]]          # one list per output slot (§5.3 merge)
    ui: dict | None


class ExecutionCache:
    """Output entries by signature plus node instance state by (node id, class)."""

    def __init__(self, policy: str = "classic", size: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown cache policy {policy!r}; expected one of {POLICIES}")
        if policy == "lru" and not size:
            raise ValueError("the lru cache policy needs a size (--cache-lru N with N > 0)")
        self.policy = policy
        self.size = size
        self._outputs: OrderedDict[Any, CacheEntry] = OrderedDict()
        self._states: dict[tuple[str, str], dict] = {}
        self._signatures: dict[str, Any] = {}

    def begin_prompt(self, prompt: dict, signatures: dict[str, Any]) -> None:
        self._signatures = signatures
        if self.policy == "classic":
            current = set(signatures.values())
            for key in [k for k in self._outputs if k not in current]:
                del self._outputs[key]
        if self.policy != "lru":
            keep = {(nid, node.get("class_type")) for nid, node in prompt.items()}
            self._states = {k: v for k, v in self._states.items() if k in keep and self.policy != "none"}

    def get(self, node_id: str) -> CacheEntry | None:
        if self.policy == "none":
            return None
        key = self._signatures.get(node_id)
        entry = self._outputs.get(key)
        if entry is not None and self.policy == "lru":
            self._outputs.move_to_end(key)
        return entry

    def set(self, node_id: str, entry: CacheEntry) -> None:
        if self.policy == "none":
            return
        key = self._signatures[node_id]
        self._outputs[key] = entry
        self._outputs.move_to_end(key)
        if self.policy == "lru":
            while len(self._outputs) > self.size:
                self._outputs.popitem(last=False)

    def state(self, node_id: str, class_type: str) -> dict:
        if self.policy == "none":
            return {}
        return self._states.setdefault((node_id, class_type), {})

    def clear(self) -> None:
        self._outputs.clear()
        self._states.clear()

    def __len__(self) -> int:
        return len(self._outputs)
