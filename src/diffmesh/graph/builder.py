"""Building the graph a node expands into (`{"result": ..., "expand": builder.finalize()}`), with
the names of ComfyUI's GraphBuilder, so node code written for ComfyUI reads the same.

A builder made while a node runs gets that call's default prefix ("<node id>.<call index>.<graph
index>."), so the ids of an expansion are unique in the prompt and the same on every run (which
is what lets its nodes be cached). Outside a node call the prefix is "" unless one is given.
"""

from __future__ import annotations

from typing import Any

from diffmesh.graph.node_call import EXPANSION_SCOPE


class Node:
    """One node of an expansion graph."""

    def __init__(self, node_id: str, class_type: str, inputs: dict[str, Any]):
        self.id = node_id
        self.class_type = class_type
        self.inputs = dict(inputs)
        self.override_display_id: str | None = None

    def out(self, index: int) -> list:
        """A link to output `index` of this node."""
        return [self.id, index]

    def set_input(self, key: str, value: Any) -> None:
        """Set an input (a constant or a link); None removes it."""
        if value is None:
            self.inputs.pop(key, None)
        else:
            self.inputs[key] = value

    def get_input(self, key: str) -> Any:
        return self.inputs.get(key)

    def set_override_display_id(self, override_display_id: str) -> None:
        """Show this node in the UI as node `override_display_id` (e.g. the node a loop copies)."""
        self.override_display_id = override_display_id

    def serialize(self) -> dict:
        data: dict[str, Any] = {"class_type": self.class_type, "inputs": self.inputs}
        if self.override_display_id is not None:
            data["override_display_id"] = self.override_display_id
        return data


class GraphBuilder:
    def __init__(self, prefix: str | None = None):
        if prefix is None:
            scope = EXPANSION_SCOPE.get()
            prefix = "" if scope is None else scope.next_prefix()
        self.prefix = prefix
        self.nodes: dict[str, Node] = {}
        self.id_gen = 1

    def node(self, class_type: str, id: str | None = None, **kwargs: Any) -> Node:  # noqa: A002 - ComfyUI's name
        """A new node (or the existing one with that id); keyword arguments are its inputs."""
        if id is None:
            id = str(self.id_gen)
            self.id_gen += 1
        node_id = self.prefix + id
        if node_id not in self.nodes:
            self.nodes[node_id] = Node(node_id, class_type, kwargs)
        return self.nodes[node_id]

    def lookup_node(self, id: str) -> Node | None:  # noqa: A002
        return self.nodes.get(self.prefix + id)

    def remove_node(self, id: str) -> None:  # noqa: A002
        self.nodes.pop(self.prefix + id, None)

    def replace_node_output(self, node_id: str, index: int, new_value: Any) -> None:
        """Every input linked to output `index` of `node_id` gets `new_value` instead."""
        node_id = self.prefix + node_id
        for node in self.nodes.values():
            for key, value in list(node.inputs.items()):
                if isinstance(value, list) and len(value) == 2 and value[0] == node_id and value[1] == index:
                    node.set_input(key, new_value)

    def finalize(self) -> dict[str, dict]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}
