"""Small real nodes (integer arithmetic) for executor tests: no models, instant to run."""

from __future__ import annotations

from diffmesh.nodes.base import NodeDef, NodeSchema, OutputSpec, inp, out
from diffmesh.nodes.registry import NodeRegistry


def _const(ctx, value):
    return (value,)


def _add(ctx, a, b):
    return (a + b,)


def _fail(ctx, a):
    raise ValueError(f"refusing {a}")


def _show(ctx, value, label="v"):
    return {"ui": {"values": [f"{label}={value}"]}, "result": ()}


def _split(ctx, value):
    return ([value, value + 1, value + 2],)


def _progress(ctx, steps):
    for i in range(steps):
        ctx.progress(i + 1, steps)
    return (steps,)


TOY_NODES = (
    NodeDef(NodeSchema("Const", "Const", "test", inputs=(inp("value", "INT", default=0, min=-100, max=100),),
                       outputs=out("INT")), _const),
    NodeDef(NodeSchema("Add", "Add", "test", inputs=(inp("a", "INT", default=0), inp("b", "INT", default=0)),
                       outputs=out("INT")), _add),
    NodeDef(NodeSchema("Fail", "Fail", "test", inputs=(inp("a", "INT"),), outputs=out("INT")), _fail),
    NodeDef(NodeSchema("Show", "Show", "test", inputs=(inp("value", "INT"), inp("label", "STRING", section="optional", default="v")),
                       output_node=True), _show),
    NodeDef(NodeSchema("Split", "Split", "test", inputs=(inp("value", "INT"),),
                       outputs=(OutputSpec("INT", is_list=True),)), _split),
    NodeDef(NodeSchema("Steps", "Steps", "test", inputs=(inp("steps", "INT", default=3),), outputs=out("INT")),
            _progress),
)


def toy_registry() -> NodeRegistry:
    return NodeRegistry(TOY_NODES)


class Recorder:
    """An event sink that keeps every event."""

    def __init__(self):
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event, data):
        self.events.append((event, data))

    def named(self, name):
        return [d for e, d in self.events if e == name]

    def executed_nodes(self):
        return [d["node"] for d in self.named("executing")]
