"""GraphBuilder: expansions built with ComfyUI's builder names get ComfyUI's deterministic ids
("<node id>.<call index>.<graph index>.<n>"), per list-mapped call, and run."""

from __future__ import annotations

from diffmesh.config.paths import Paths
from diffmesh.graph.builder import GraphBuilder
from diffmesh.graph.executor import PromptExecutor
from diffmesh.nodes.base import NodeDef, NodeSchema, inp, out
from diffmesh.nodes.registry import NodeRegistry

from .toy_nodes import TOY_NODES, Recorder


def _add_times(ctx, value, times):
    """value + value + ... (`times` additions) as a chain of Add nodes."""
    graph = GraphBuilder()
    current: object = value
    for _ in range(times):
        current = graph.node("Add", a=current, b=value).out(0)
    return {"result": (current,), "expand": graph.finalize()}


ADD_TIMES = NodeDef(NodeSchema("AddTimes", "AddTimes", "test",
                               inputs=(inp("value", "INT"), inp("times", "INT", default=1)), outputs=out("INT")),
                    _add_times)


def test_builder_ids_follow_comfyui_prefixes_per_call_and_the_chain_runs(tmp_path):
    executor = PromptExecutor(NodeRegistry(TOY_NODES + (ADD_TIMES,)), None, Paths.build(tmp_path))
    prompt = {"1": {"class_type": "Split", "inputs": {"value": 1}},              # [1, 2, 3]: three calls
              "5": {"class_type": "AddTimes", "inputs": {"value": ["1", 0], "times": 2}},
              "9": {"class_type": "Show", "inputs": {"value": ["5", 0]}}}
    sink = Recorder()
    result = executor.execute(prompt, "p", {}, sink)
    assert result.status == "success", result.error
    assert result.outputs["9"] == {"values": ["v=3", "v=6", "v=9"]}
    ran = [n for n in sink.executed_nodes() if n.startswith("5.")]
    assert sorted(ran) == ["5.0.0.1", "5.0.0.2", "5.1.0.1", "5.1.0.2", "5.2.0.1", "5.2.0.2"]


def test_builder_outside_a_node_call_and_its_editing_helpers():
    graph = GraphBuilder(prefix="x.")
    first = graph.node("Const", value=1)
    second = graph.node("Add", "sum", a=first.out(0), b=first.out(0))
    second.set_override_display_id("7")
    graph.replace_node_output("1", 0, 5)
    assert graph.lookup_node("sum") is second and graph.node("Add", "sum") is second
    second.set_input("b", None)
    assert graph.finalize() == {"x.1": {"class_type": "Const", "inputs": {"value": 1}},
                                "x.sum": {"class_type": "Add", "inputs": {"a": 5}, "override_display_id": "7"}}
    assert GraphBuilder().prefix == ""


async def _async_add_times(ctx, value, times):
    return _add_times(ctx, value, times)


def test_an_async_node_building_its_expansion_gets_its_calls_prefix(tmp_path):
    node = NodeDef(NodeSchema("AsyncAddTimes", "AsyncAddTimes", "test",
                              inputs=(inp("value", "INT"), inp("times", "INT", default=1)), outputs=out("INT")),
                   _async_add_times, is_async=True)
    executor = PromptExecutor(NodeRegistry(TOY_NODES + (node,)), None, Paths.build(tmp_path))
    prompt = {"5": {"class_type": "AsyncAddTimes", "inputs": {"value": 4, "times": 1}},
              "9": {"class_type": "Show", "inputs": {"value": ["5", 0]}}}
    sink = Recorder()
    assert executor.execute(prompt, "p", {}, sink).outputs["9"] == {"values": ["v=8"]}
    assert "5.0.0.1" in sink.executed_nodes()
