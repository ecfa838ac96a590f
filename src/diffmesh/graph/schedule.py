"""Which nodes run, and in what order (spec §5.2; ComfyUI's ExecutionList).

Each output node is scheduled (even when cached), then recursively every upstream node whose
output is not cached, through "strong" links: links into lazy inputs are left out until the node
asks for them (`make_input_strong_link`, from its `check_lazy_status`). A node that was picked may
be put back with new dependencies (lazy inputs it needs, the nodes of its expansion) and runs
again when they are done; an async node is held by an external block until its task ends.
Among ready nodes the pick favours output and async nodes, then nodes feeding an output, then two
hops from one (ComfyUI's UX order, so previews appear early), else the first ready node.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from diffmesh.graph.graph_utils import is_link


class DependencyCycleError(Exception):
    """The prompt's links form a cycle; nothing in it can run. `nodes`: those of the cycle."""

    def __init__(self, message: str, nodes: list[str] | None = None):
        super().__init__(message)
        self.nodes = list(nodes or [])


class NodeInputError(Exception):
    """A node asked (check_lazy_status) for an input that is not a link."""


class ExecutionList:
    def __init__(self, dynprompt, is_output: Callable[[str], bool], is_cached: Callable[[str], bool],
                 is_lazy: Callable[[str, str], bool] = lambda nid, name: False,
                 is_async: Callable[[str], bool] = lambda nid: False):
        self.dynprompt = dynprompt
        self.is_output = is_output
        self.is_cached = is_cached
        self.is_lazy = is_lazy
        self.is_async = is_async
        self.pending: dict[str, int] = {}                 # node -> count of blocks (insertion order)
        self.blocking: dict[str, set[str]] = {}          # node -> nodes it blocks
        self.external = 0
        self.unblocked = asyncio.Event()
        self.staged: str | None = None

    def _inputs(self, node_id: str) -> dict:
        return self.dynprompt.get_node(node_id).get("inputs", {})

    def add(self, node_id: str, include_lazy: bool = False) -> None:
        """Schedule `node_id` and every uncached node it needs (not through lazy inputs)."""
        stack, links = [node_id], []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = 0
            self.blocking[current] = set()
            for name, value in self._inputs(current).items():
                if not is_link(value) or not self.dynprompt.has_node(value[0]):
                    continue
                if (include_lazy or not self.is_lazy(current, name)) and not self.is_cached(value[0]):
                    stack.append(value[0])
                    links.append((value[0], current))
        for source, target in links:
            self.add_strong_link(source, target)

    def add_strong_link(self, source: str, target: str) -> None:
        """`target` waits for `source` (scheduled if it is not cached)."""
        if self.is_cached(source):
            return
        self.add(source)
        if target not in self.blocking[source]:
            self.blocking[source].add(target)
            self.pending[target] += 1

    def make_input_strong_link(self, node_id: str, input_name: str) -> None:
        value = self._inputs(node_id).get(input_name)
        if value is None:
            raise NodeInputError(f"Node {node_id} says it needs input {input_name}, but there is no input "
                                 "to that node at all")
        if not is_link(value):
            raise NodeInputError(f"Node {node_id} says it needs input {input_name}, but that value is a constant")
        self.add_strong_link(value[0], node_id)

    def add_external_block(self, node_id: str) -> Callable[[], None]:
        """Hold `node_id` until the returned function is called (an async node's task ended)."""
        self.external += 1
        self.pending[node_id] += 1

        def unblock() -> None:
            self.external -= 1
            self.pending[node_id] -= 1
            self.unblocked.set()
        return unblock

    def __bool__(self) -> bool:
        return bool(self.pending)

    def ready(self) -> list[str]:
        return [nid for nid, blocks in self.pending.items() if blocks == 0]

    async def stage(self, should_stop: Callable[[], bool] = lambda: False) -> str | None:
        """The node to run next (waits for async tasks when only they hold nodes back; None when
        `should_stop()` turns true meanwhile); raises `DependencyCycleError` when nothing can
        become ready."""
        assert self.staged is None
        available = self.ready()
        while not available and self.external > 0:
            try:
                await asyncio.wait_for(self.unblocked.wait(), 0.05)
            except asyncio.TimeoutError:
                if should_stop():
                    return None
                continue
            self.unblocked.clear()
            available = self.ready()
        if not available:
            cycle = self.cycle_nodes()
            raise DependencyCycleError(f"Dependency cycle detected between nodes {', '.join(cycle)}: "
                                       "remove one of the links that loops back", cycle)
        self.staged = self._pick(available)
        return self.staged

    def cycle_nodes(self) -> list[str]:
        """The pending nodes left once every node nothing blocks is dissolved, repeatedly: the
        nodes of a cycle (and those waiting on one)."""
        blocked_by = {nid: set() for nid in self.pending}
        for source, targets in self.blocking.items():
            for target in targets:
                if target in blocked_by:
                    blocked_by[target].add(source)
        free = [nid for nid, sources in blocked_by.items() if not sources]
        while free:
            for nid in free:
                del blocked_by[nid]
                for sources in blocked_by.values():
                    sources.discard(nid)
            free = [nid for nid, sources in blocked_by.items() if not sources]
        return list(blocked_by)

    def _pick(self, ready: list[str]) -> str:
        for node_id in ready:
            if self.is_output(node_id) or self.is_async(node_id):
                return node_id
        for node_id in ready:
            if any(self.is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            if any(self.is_output(b2) for b in self.blocking[node_id] for b2 in self.blocking.get(b, ())):
                return node_id
        return ready[0]

    def unstage(self) -> None:
        """The staged node is pending again (it added dependencies or started an async task)."""
        self.staged = None

    def complete(self) -> None:
        node_id, self.staged = self.staged, None
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            if blocked in self.pending:
                self.pending[blocked] -= 1
