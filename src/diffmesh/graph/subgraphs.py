"""Where a UI workflow's inputs come from, through subgraphs, bypassed and virtual nodes (spec §7).

The ComfyUI frontend (1.58) flattens a workflow for the API like this, and so does this module:

- every node gets an execution id: its own id, prefixed by the ids of the subgraph instances that
  hold it, joined by `:` (`12:5`, nested `12:7:3`);
- a subgraph definition (`definitions.subgraphs[]`) has its own `nodes` and `links`; a link whose
  origin is the input boundary (origin id -10, origin slot = the subgraph input's index) continues
  on the instance's input of that index: its outer link if it has one, else the value of the
  instance's promoted widget for it, else nothing (the inner node keeps its own widget value);
- an instance's output `k` is the first link into the output boundary (target id -20, slot `k`),
  resolved inside the instance;
- a bypassed node (mode 4) stands in with one of its inputs (same slot index when its type fits,
  else the first exact type, else the first compatible); Reroute-like virtual nodes pass their
  input through; a PrimitiveNode gives its widget value;
- muted (2) and bypassed (4) nodes are not emitted, and neither is anything inside a muted or
  bypassed top-level instance; links to nodes that were not emitted are dropped afterwards.
  (The frontend walks nested instances regardless of their own mode; so does this.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from diffmesh.errors import WorkflowError

MUTED, BYPASSED = 2, 4
INPUT_BOUNDARY, OUTPUT_BOUNDARY = -10, -20     # the ids of a subgraph's input and output nodes
VIRTUAL_NODES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
Resolved = tuple  # ("link", [execution id, slot]) | ("value", value)


def parse_links(raw: Any) -> dict[Any, tuple]:
    """link id -> (origin id, origin slot, target id, target slot, type), from either serialisation."""
    links = {}
    for link in raw or []:
        if isinstance(link, dict):                    # subgraph definitions and version-1 workflows
            links[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                                 link.get("type"))
        elif isinstance(link, list) and len(link) >= 5:
            links[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else None)
    return links


@dataclass
class Scope:
    """One graph level: the root workflow or one subgraph definition."""
    nodes: dict[Any, dict]
    links: dict[Any, tuple]
    definition: dict = field(default_factory=dict)   # the subgraph definition ({} for the root)

    @classmethod
    def of(cls, graph: dict, definition: dict | None = None) -> "Scope":
        return cls({n["id"]: n for n in graph.get("nodes") or []}, parse_links(graph.get("links")),
                   definition or {})

    def boundary_links(self, side: str, index: int) -> list[tuple[Any, tuple]]:
        """(link id, link) of the subgraph's input/output slot `index`, in the slot's own order
        (its `linkIds`; the links' own ends when a file lacks them)."""
        slots = self.definition.get(side) or []
        ids = (slots[index].get("linkIds") or []) if index < len(slots) else []
        links = [(i, self.links[i]) for i in ids if i in self.links]
        if links:
            return links
        end, position = (0, 1) if side == "inputs" else (2, 3)
        boundary = INPUT_BOUNDARY if side == "inputs" else OUTPUT_BOUNDARY
        return [(i, link) for i, link in sorted(self.links.items(), key=lambda kv: str(kv[0]))
                if link[end] == boundary and link[position] == index]


@dataclass
class Placed:
    """A node where it runs: inside which scope, under which chain of subgraph instances."""
    node: dict
    scope: Scope
    path: tuple[str, ...] = ()
    parent: "Placed | None" = None                   # the instance whose definition holds the node

    @property
    def id(self) -> str:
        return ":".join(self.path + (str(self.node["id"]),))

    @property
    def inputs(self) -> list[dict]:
        return self.node.get("inputs") or []


def _compatible(a: Any, b: Any) -> bool:
    if a in ("*", "", None) or b in ("*", "", None) or a == b:
        return True
    return bool(set(str(a).split(",")) & set(str(b).split(",")))   # "INT,FLOAT" style type lists


def bypass_slot(node: dict, slot: int, requested: Any) -> int:
    """The input index a bypassed node passes on for its output `slot`, or -1 (the frontend's rule)."""
    inputs = node.get("inputs") or []
    outputs = node.get("outputs") or []
    if requested in ("*", ""):
        return slot if len(inputs) > slot else 0
    out_type = outputs[slot].get("type") if slot < len(outputs) else None
    if slot < len(inputs) and _compatible(inputs[slot].get("type"), out_type) \
            and _compatible(inputs[slot].get("type"), requested):
        return slot
    for index, candidate in enumerate(inputs):
        if candidate.get("type") == requested:
            return index
    for index, candidate in enumerate(inputs):
        if _compatible(candidate.get("type"), out_type) and _compatible(candidate.get("type"), requested):
            return index
    return -1


class Resolver:
    """Resolves node inputs to their origins across subgraph boundaries.

    `subgraphs` maps a definition id to its `Scope`; `widgets` answers `value(placed, name)` (a
    node's own widget value, the default of a promoted widget) and `has_control(placed, name)`
    (whether that widget has a control_after_generate companion).
    """

    def __init__(self, subgraphs: dict[str, Scope], widgets: Any):
        self.subgraphs = subgraphs
        self.widgets = widgets

    def instance_scope(self, node: dict) -> Scope | None:
        return self.subgraphs.get(node.get("type"))

    def inner_nodes(self, instance: Placed, depth: int = 0) -> list[Placed]:
        """Every non-instance node inside `instance`, nested instances expanded, definition order."""
        scope = self.instance_scope(instance.node)
        if depth > 32:
            raise WorkflowError(f"subgraph instance {instance.id} nests itself",
                                fix="remove the subgraph that contains itself from the workflow")
        placed: list[Placed] = []
        for node in scope.nodes.values():
            inner = Placed(node, scope, instance.path + (str(instance.node["id"]),), instance)
            placed += self.inner_nodes(inner, depth + 1) if self.instance_scope(node) else [inner]
        return placed

    def resolve_input(self, placed: Placed, slot: int, visited: set | None = None,
                      requested: Any = None) -> Resolved | None:
        if slot >= len(placed.inputs):
            return None
        return self.resolve_socket(placed, placed.inputs[slot], visited, requested)

    def resolve_socket(self, placed: Placed, socket: dict, visited: set | None = None,
                       requested: Any = None) -> Resolved | None:
        visited = self._visit(visited, placed, "I", socket.get("name"))
        link = placed.scope.links.get(socket.get("link"))
        if link is None:
            return None
        origin_id, origin_slot = link[0], link[1]
        if placed.parent is not None and origin_id == INPUT_BOUNDARY:
            return self._through_boundary(placed.parent, origin_slot, visited)
        origin = placed.scope.nodes.get(origin_id)
        if origin is None:
            return None
        source = Placed(origin, placed.scope, placed.path, placed.parent)
        return self.resolve_output(source, origin_slot, requested or socket.get("type"), visited)

    def boundary_socket(self, instance: Placed, index: int) -> dict | None:
        """The instance's input for its definition's input slot `index`. The frontend rebuilds an
        instance's inputs from the definition's slots and matches the saved ones by name (and
        type), so a saved workflow may leave out unlinked widget inputs (compressWidgetInputSlots)."""
        slots = self.instance_scope(instance.node).definition.get("inputs") or []
        if index >= len(slots):
            return instance.inputs[index] if index < len(instance.inputs) else None
        name, type_ = slots[index].get("name"), slots[index].get("type")
        same = [s for s in instance.inputs if s.get("name") == name]
        typed = [s for s in same if s.get("type") == type_]
        return (typed or same or [{"name": name, "type": type_, "link": None}])[0]

    def _through_boundary(self, instance: Placed, index: int, visited: set) -> Resolved | None:
        """Input `index` of a subgraph instance, seen from inside it."""
        socket = self.boundary_socket(instance, index)
        if socket is None:
            return None
        if instance.scope.links.get(socket.get("link")) is not None:
            return self.resolve_socket(instance, socket, visited)
        promoted = self.promoted_values(instance)
        return ("value", promoted[index]) if index in promoted else None

    def resolve_output(self, placed: Placed, slot: int, requested: Any, visited: set) -> Resolved | None:
        visited = self._visit(visited, placed, "O", slot)
        node = placed.node
        if node.get("type") == "PrimitiveNode":     # its value is written into the widget it feeds
            values = node.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if node.get("mode") == BYPASSED:
            index = bypass_slot(node, slot, requested)
            return None if index < 0 else self.resolve_input(placed, index, visited)
        scope = self.instance_scope(node)
        if scope is not None:
            links = scope.boundary_links("outputs", slot)
            if not links:
                return None
            origin_id, origin_slot = links[0][1][0], links[0][1][1]
            if origin_id == INPUT_BOUNDARY:          # an input wired straight to an output
                return self._through_boundary(placed, origin_slot, visited)
            origin = scope.nodes.get(origin_id)
            if origin is None:
                return None
            inner = Placed(origin, scope, placed.path + (str(node["id"]),), placed)
            return self.resolve_output(inner, origin_slot, requested, visited)
        if node.get("type") in VIRTUAL_NODES:
            return self.resolve_input(placed, slot, visited, requested) if slot < len(placed.inputs) else None
        return ("link", [placed.id, slot])

    def _visit(self, visited: set | None, placed: Placed, kind: str, slot: int) -> set:
        visited = set() if visited is None else visited
        key = (placed.scope.definition.get("id"), placed.node["id"], kind, slot)
        if key in visited:
            raise WorkflowError(f"node {placed.id} ({placed.node.get('type')}): its links form a loop",
                                fix="remove the link that closes the loop in the editor")
        visited.add(key)
        return visited

    # -- promoted widgets ------------------------------------------------------------------------

    def promoted_values(self, instance: Placed) -> dict[int, Any]:
        """Input index -> widget value, for the instance inputs that show a promoted widget.

        An input is promoted when one of its inner links ends on a widget input (or on a nested
        instance's promoted input). The instance saves one value per promoted input in
        `widgets_values`, in input order; older frontends saved an extra control_after_generate
        value after a seed-like one, which is skipped when the list is longer. A missing value is
        the inner widget's own value.
        """
        scope = self.instance_scope(instance.node)
        targets: dict[int, tuple[Placed, dict]] = {}
        for index in range(len(scope.definition.get("inputs") or instance.inputs)):
            target = self._widget_target(instance, scope, index)
            if target is not None:
                targets[index] = target
        saved = instance.node.get("widgets_values")
        saved = saved if isinstance(saved, list) else []
        extra_slots = len(saved) > len(targets)
        values: dict[int, Any] = {}
        position = 0
        for index, (inner, socket) in targets.items():
            value = saved[position] if position < len(saved) else None
            values[index] = value if value is not None else self._inner_value(inner, socket)
            position += 1
            if extra_slots and self._has_control(inner, socket):
                position += 1
        return values

    def _widget_target(self, instance: Placed, scope: Scope, index: int) -> tuple[Placed, dict] | None:
        for link_id, link in scope.boundary_links("inputs", index):
            node = scope.nodes.get(link[2])
            if node is None:
                continue
            socket = next((s for s in node.get("inputs") or [] if s.get("link") == link_id), None)
            if socket is None:
                continue
            inner = Placed(node, scope, instance.path + (str(instance.node["id"]),), instance)
            if self.instance_scope(node) is not None:           # nested promotion
                if self.slot_index(node, socket) in self.promoted_values(inner):
                    return inner, socket
            elif socket.get("widget"):
                return inner, socket
        return None

    def slot_index(self, instance_node: dict, socket: dict) -> int:
        """The definition input slot that a saved input of a nested instance stands for."""
        slots = self.instance_scope(instance_node).definition.get("inputs") or []
        for index, slot in enumerate(slots):
            if slot.get("name") == socket.get("name"):
                return index
        return next(i for i, s in enumerate(instance_node.get("inputs") or []) if s is socket)

    def _has_control(self, inner: Placed, socket: dict) -> bool:
        if self.instance_scope(inner.node) is not None:
            return False
        return self.widgets.has_control(inner, socket["widget"]["name"])

    def _inner_value(self, inner: Placed, socket: dict) -> Any:
        if self.instance_scope(inner.node) is not None:
            return self.promoted_values(inner).get(self.slot_index(inner.node, socket))
        return self.widgets.value(inner, socket["widget"]["name"])


def subgraph_scopes(ui: dict) -> dict[str, Scope]:
    """Definition id -> Scope, for every subgraph the workflow defines (nested ones are listed too)."""
    definitions = (ui.get("definitions") or {}).get("subgraphs") or []
    return {d["id"]: Scope.of(d, d) for d in definitions if isinstance(d, dict) and "id" in d}
