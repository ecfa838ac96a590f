"""Which nodes run, and in what order (spec §5.2).

Each output node is scheduled (even when cached), then recursively every upstream node whose
output is not cached. Nodes run in dependency order; among ready nodes the pick favours output
nodes, then nodes feeding an output, then two hops from one (ComfyUI's UX order, so previews
appear early), else the first ready node in insertion order.
"""

from __future__ import annotations

from typing import Callable

from diffmesh.graph.graph_utils import is_link


class DependencyCycleError(Exception):
    """The prompt's links form a cycle; nothing in it can run."""


class ExecutionList:
    def __init__(self, prompt: dict, is_output: Callable[[str], bool], is_cached: Callable[[str], bool]):
        self.prompt = prompt
        self.is_output = is_output
        self.is_cached = is_cached
        self.pending: dict[str, set[str]] = {}          # node -> scheduled upstream nodes not yet done
        self.order: list[str] = []                      # insertion order

    def add(self, node_id: str) -> None:
        if node_id in self.pending:
            return
        self.pending[node_id] = set()
        self.order.append(node_id)
        for value in self.prompt[node_id].get("inputs", {}).values():
            if not is_link(value) or value[0] not in self.prompt:
                continue
            source = value[0]
            if not self.is_cached(source):
                self.add(source)
                self.pending[node_id].add(source)

    def __bool__(self) -> bool:
        return bool(self.pending)

    def _feeds_output(self, node_id: str, hops: int) -> bool:
        frontier = {node_id}
        for _ in range(hops):
            frontier = {nid for nid, node in self.prompt.items()
                        if any(is_link(v) and v[0] in frontier for v in node.get("inputs", {}).values())}
            if any(self.is_output(n) for n in frontier):
                return True
        return False

    def next(self) -> str:
        """The node to run next; raises `DependencyCycleError` when nothing is ready."""
        ready = [nid for nid in self.order if nid in self.pending and not self.pending[nid]]
        if not ready:
            cycle = sorted(self.pending)
            raise DependencyCycleError(f"Dependency cycle detected between nodes {', '.join(cycle)}: "
                                       "remove one of the links that loops back")
        for test in (self.is_output, lambda n: self._feeds_output(n, 1), lambda n: self._feeds_output(n, 2)):
            for node_id in ready:
                if test(node_id):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        self.pending.pop(node_id, None)
        for waiting in self.pending.values():
            waiting.discard(node_id)


def build_execution_list(prompt: dict, outputs: list[str], is_output: Callable[[str], bool],
                         is_cached: Callable[[str], bool]) -> ExecutionList:
    execution = ExecutionList(prompt, is_output, is_cached)
    for output_id in outputs:
        execution.add(output_id)
    return execution
