"""Output cache keyed by input signature, and node instance state keyed by (id, class) (spec §5.4).

A node's signature covers its class, its IS_CHANGED value, its constants and, through links,
everything upstream; node ids do not matter (except for not-idempotent nodes), so the same
subgraph under new ids hits the cache. Policies: "classic" keeps only the current prompt's
entries, "lru" keeps the last N outputs across prompts, "none" caches nothing. Node states follow
the outputs: classic keeps the current prompt's nodes' states, lru a node's state while an output
that node wrote is cached (so states stay bounded by N too), none keeps none between prompts.
"""

from __future__ import annotations

import threading
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


def compute_signature(prompt, node_id: str, changed: dict[str, Any], keyed_by_id: set[str]) -> tuple:
    """The signature of one node; `prompt` may be a dynamic prompt's view (ephemeral nodes too)."""
    order = _ancestry(prompt, node_id)
    parts = [_immediate(prompt, node_id, order, changed, keyed_by_id)]
    parts += [_immediate(prompt, ancestor, order, changed, keyed_by_id) for ancestor in order]
    return tuple(parts)


def compute_signatures(prompt: dict, changed: dict[str, Any], keyed_by_id: set[str]) -> dict[str, tuple]:
    """node id -> signature for every node of the prompt."""
    return {node_id: compute_signature(prompt, node_id, changed, keyed_by_id) for node_id in prompt}


@dataclass
class CacheEntry:
    outputs: list[list[Any]]          # one list per output slot (§5.3 merge)
    ui: dict | None


class ExecutionCache:
    """Output entries by signature plus node instance state by (node id, class), shared by the
    prompts that run at once. Each prompt works through its own `CacheSession`; one lock guards
    the shared tables (entries are immutable once written)."""

    def __init__(self, policy: str = "classic", size: int | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown cache policy {policy!r}; expected one of {POLICIES}")
        if policy == "lru" and not size:
            raise ValueError("the lru cache policy needs a size (--cache-lru N with N > 0)")
        self.policy = policy
        self.size = size
        self._lock = threading.RLock()
        self._outputs: OrderedDict[Any, CacheEntry] = OrderedDict()
        self._states: dict[tuple[str, str], dict] = {}
        self._state_sigs: dict[tuple[str, str], Any] = {}             # lru: the output a state goes with
        self._claims: dict[tuple[str, str], "CacheSession"] = {}     # states in use by a running prompt
        self._active: set["CacheSession"] = set()
        self._last: CacheSession | None = None
        # Ephemeral (expanded) nodes by the id of the node that expanded them, as (id, signature):
        # classic keeps their outputs while that node is in the prompt (ComfyUI's subcaches), so a
        # node that runs again (IS_CHANGED) finds the unchanged part of its expansion cached.
        self._children: dict[str, set[tuple[str, Any]]] = {}

    def begin_prompt(self, prompt: dict, signatures: dict[str, Any]) -> "CacheSession":
        """Start one prompt: drop what the policy no longer keeps (never what a running prompt
        uses), and return the prompt's session with the entries it finds pinned."""
        with self._lock:
            active_sigs = set().union(*(set(s.signatures.values()) for s in self._active)) if self._active else set()
            if self.policy == "classic":
                current = set(signatures.values()) | active_sigs | self._descendants(set(prompt))
                for key in [k for k in self._outputs if k not in current]:
                    del self._outputs[key]
            if self.policy != "lru":
                keep = {(nid, node.get("class_type")) for nid, node in prompt.items()} | set(self._claims)
                self._states = {k: v for k, v in self._states.items() if k in keep and self.policy != "none"}
            else:
                self._prune_states()
            session = CacheSession(self, signatures)
            self._active.add(session)
            self._last = session
            return session

    def _descendants(self, node_ids: set[str]) -> set:
        """Signatures of the ephemeral nodes expanded (at any depth) from `node_ids`; the table
        keeps only those nodes."""
        stack, seen, found = list(node_ids), set(node_ids), set()
        while stack:
            for child, signature in self._children.get(stack.pop(), ()):
                found.add(signature)
                if child not in seen:
                    seen.add(child)
                    stack.append(child)
        self._children = {k: v for k, v in self._children.items() if k in seen}
        return found

    def _adopt(self, parent_id: str, child_id: str, signature: Any) -> None:
        with self._lock:
            self._children.setdefault(parent_id, set()).add((child_id, signature))

    def _lookup(self, key: Any) -> CacheEntry | None:
        if self.policy == "none":
            return None
        with self._lock:
            entry = self._outputs.get(key)
            if entry is not None and self.policy == "lru":
                self._outputs.move_to_end(key)
            return entry

    def _store(self, key: Any, entry: CacheEntry) -> None:
        if self.policy == "none":
            return
        with self._lock:
            self._outputs[key] = entry
            self._outputs.move_to_end(key)
            if self.policy == "lru" and len(self._outputs) > self.size:
                while len(self._outputs) > self.size:
                    self._outputs.popitem(last=False)
                self._prune_states()

    def _prune_states(self) -> None:
        """lru: drop the states whose node's output is no longer cached, unless a prompt holds them."""
        keep = {k for k in self._states if k in self._claims or self._state_sigs.get(k) in self._outputs}
        self._states = {k: v for k, v in self._states.items() if k in keep}
        self._state_sigs = {k: v for k, v in self._state_sigs.items() if k in keep}

    def _state(self, session: "CacheSession", key: tuple[str, str], signature: Any = None) -> dict | None:
        """The shared state dict for `key`, claimed by `session`; None when another prompt holds it.
        `signature` is the node's output key in this prompt: under lru the state lives as long as it."""
        with self._lock:
            holder = self._claims.get(key)
            if holder is not None and holder is not session:
                return None
            self._claims[key] = session
            self._state_sigs[key] = signature
            return self._states.setdefault(key, {})

    def _end(self, session: "CacheSession") -> None:
        with self._lock:
            self._active.discard(session)
            for key in [k for k, holder in self._claims.items() if holder is session]:
                del self._claims[key]

    def get(self, node_id: str) -> CacheEntry | None:
        """The entry of `node_id` in the last prompt begun (for tests and tools)."""
        return None if self._last is None else self._last.get(node_id)

    def clear(self) -> None:
        with self._lock:
            self._outputs.clear()
            self._children.clear()
            self._states.clear()
            self._state_sigs.clear()

    def __len__(self) -> int:
        return len(self._outputs)

    def state_count(self) -> int:
        """Node instance states kept (for tests and tools)."""
        with self._lock:
            return len(self._states)


class CacheSession:
    """One prompt's view of the cache, fixed when it starts: the entries it found then (`find`) and
    those it wrote itself, pinned so a prompt starting meanwhile cannot evict them under it; an
    entry another prompt writes later is not picked up halfway (the node was not reported cached,
    so it runs). Also the node states it holds."""

    def __init__(self, cache: ExecutionCache, signatures: dict[str, Any]):
        self.cache = cache
        self.signatures = signatures
        self._pinned: dict[str, CacheEntry] = {}
        self._private: dict[tuple[str, str], dict] = {}

    def find(self, node_ids) -> list[str]:
        """The nodes served from the cache in this prompt (looked up once, at its start)."""
        for node_id in node_ids:
            entry = self.cache._lookup(self.signatures.get(node_id))
            if entry is not None:
                self._pinned[node_id] = entry
        return [nid for nid in node_ids if nid in self._pinned]

    def get(self, node_id: str) -> CacheEntry | None:
        return self._pinned.get(node_id)

    def add_ephemeral(self, node_id: str, signature: Any, parent_id: str) -> bool:
        """Sign a node an expansion added (child of `parent_id`); True when its output is cached."""
        self.signatures[node_id] = signature
        if self.cache.policy == "classic":
            self.cache._adopt(parent_id, node_id, signature)
        return bool(self.find([node_id]))

    def set(self, node_id: str, entry: CacheEntry) -> None:
        if self.cache.policy == "none":
            return
        self._pinned[node_id] = entry
        self.cache._store(self.signatures[node_id], entry)

    def state(self, node_id: str, class_type: str) -> dict:
        """Per-instance state of a node; a fresh private one while another running prompt holds it."""
        key = (node_id, class_type)
        if self.cache.policy == "none":
            return self._private.setdefault(key, {})
        shared = self.cache._state(self, key, self.signatures.get(node_id))
        return shared if shared is not None else self._private.setdefault(key, {})

    def close(self) -> None:
        """The prompt ended: its node states are free for the next prompt."""
        self.cache._end(self)
