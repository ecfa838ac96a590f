"""ComfyUI's execution model, driven by a custom node pack written as ComfyUI users write them
(tests/unit/graph/packs/exec_model_pack): lazy inputs, node expansion and loops built from it,
async nodes, list mapping, hidden inputs, VALIDATE_INPUTS / IS_CHANGED calling conventions."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from diffmesh.config.paths import Paths
from diffmesh.graph.executor import PromptExecutor
from diffmesh.nodes.custom import load_into
from diffmesh.nodes.registry import NodeRegistry

from .toy_nodes import Recorder

PACKS = Path(__file__).parent / "packs"


@pytest.fixture
def pack(tmp_path):
    """(executor, CALLS list of the pack) with only the pack's nodes registered."""
    paths = Paths.build(tmp_path)
    registry = NodeRegistry()
    report = load_into(registry, paths, extra_dirs=[PACKS])
    assert not report.failed, report.failed
    nodes_file = str(PACKS / "exec_model_pack" / "nodes.py")
    module = next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == nodes_file)
    module.CALLS.clear()
    return PromptExecutor(registry, None, paths), module.CALLS


def _show(source):
    return {"class_type": "ShowInt", "inputs": {"value": [source, 0]}}


def _run(executor, prompt, pid="p", extra=None):
    sink = Recorder()
    result = executor.execute(prompt, pid, extra or {}, sink)
    assert result.status == "success", result.error
    return result, sink


# -- lazy inputs ----------------------------------------------------------------------------------

def test_lazy_input_that_is_not_needed_never_runs_its_node(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 11}},
              "2": {"class_type": "IntConst", "inputs": {"value": 22}},
              "3": {"class_type": "LazySwitch", "inputs": {"switch": False, "on_true": ["1", 0], "on_false": ["2", 0]}},
              "9": _show("3")}
    result, sink = _run(executor, prompt)
    assert result.outputs["9"] == {"value": [22]}
    assert ("IntConst", 11) not in calls and ("IntConst", 22) in calls
    # asked first with both lazy inputs unevaluated (None), then again once on_false exists
    assert [c for c in calls if c[0] == "check_lazy_status"] == [("check_lazy_status", False, None, None),
                                                                  ("check_lazy_status", False, None, 22)]
    assert "1" not in sink.executed_nodes()


def test_lazy_input_needed_later_is_scheduled_then(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 11}},
              "2": {"class_type": "IntConst", "inputs": {"value": 22}},
              "3": {"class_type": "LazySwitch", "inputs": {"switch": True, "on_true": ["1", 0], "on_false": ["2", 0]}},
              "9": _show("3")}
    result, _ = _run(executor, prompt)
    assert result.outputs["9"] == {"value": [11]} and ("IntConst", 22) not in calls


# -- node expansion -------------------------------------------------------------------------------

def test_expansion_runs_its_graph_and_returns_the_linked_output(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 7}},
              "2": {"class_type": "DoubleByExpansion", "inputs": {"value": ["1", 0]}},
              "9": _show("2")}
    result, sink = _run(executor, prompt)
    assert result.outputs["9"] == {"value": [14]}
    assert ("IntAdd", 7, 7) in calls
    ephemeral = [d for d in sink.named("executing") if d["node"] == "2.double"]
    assert ephemeral and ephemeral[0]["display_node"] == "2"         # shown as the node that expanded it


def test_expanded_nodes_are_cached_when_the_expanding_node_runs_again(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 7}},
              "2": {"class_type": "DoubleByExpansion", "inputs": {"value": ["1", 0]}},
              "9": _show("2")}
    _run(executor, prompt, "p1")
    calls.clear()
    result, sink = _run(executor, prompt, "p2")
    assert ("DoubleByExpansion", 7) in calls                        # IS_CHANGED is NaN: it runs again
    assert not any(c[0] == "IntAdd" for c in calls)                  # its expansion's node is served from the cache
    assert result.outputs["9"] == {"value": [14]}


def test_recursive_expansion_is_a_loop(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "SumDown", "inputs": {"total": 100, "n": 4}}, "9": _show("1")}
    result, _ = _run(executor, prompt)
    assert result.outputs["9"] == {"value": [110]}
    assert [c for c in calls if c[0] == "IntAdd"] == [("IntAdd", 100, 4), ("IntAdd", 104, 3), ("IntAdd", 107, 2),
                                                      ("IntAdd", 109, 1)]


def test_while_loop_copies_its_body_through_dynprompt_until_the_condition_fails(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "WhileOpen", "inputs": {"initial": 1}},
              "2": {"class_type": "IntConst", "inputs": {"value": 3}},
              "3": {"class_type": "IntAdd", "inputs": {"a": ["1", 1], "b": ["2", 0]}},
              "4": {"class_type": "IntLess", "inputs": {"a": ["3", 0], "b": 12}},
              "5": {"class_type": "WhileClose", "inputs": {"flow": ["1", 0], "condition": ["4", 0], "value": ["3", 0]}},
              "9": _show("5")}
    result, sink = _run(executor, prompt)
    assert result.outputs["9"] == {"value": [13]}                    # 1 -> 4 -> 7 -> 10 -> 13
    assert [c[1] for c in calls if c[0] == "IntAdd"] == [1, 4, 7, 10]
    assert [c for c in calls if c[0] == "IntConst"] == [("IntConst", 3)]   # outside the body: runs once
    displays = {d["display_node"] for d in sink.named("executing")}
    assert displays <= set(prompt)                                  # copies display as the nodes they copy


def test_expansion_reusing_an_existing_id_is_an_execution_error(pack):
    executor, _ = pack
    prompt = {"2.double": {"class_type": "IntConst", "inputs": {"value": 1}},
              "2": {"class_type": "DoubleByExpansion", "inputs": {"value": ["2.double", 0]}},
              "9": _show("2")}
    result = executor.execute(prompt, "p", {}, Recorder())
    assert result.status == "error" and result.error["node_id"] == "2"
    assert "duplicate node 2.double" in result.error["exception_message"]


# -- async ----------------------------------------------------------------------------------------

def test_independent_async_nodes_run_at_the_same_time(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "AsyncDelay", "inputs": {"value": 1, "seconds": 0.3}},
              "2": {"class_type": "AsyncDelay", "inputs": {"value": 2, "seconds": 0.3}},
              "3": {"class_type": "IntAdd", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
              "9": _show("3")}
    result, _ = _run(executor, prompt)
    assert result.outputs["9"] == {"value": [3]}
    order = [c for c in calls if c[0] in ("start", "end")]
    assert [kind for kind, _ in order[:2]] == ["start", "start"], order   # both started before either ended


def test_async_validate_inputs_is_awaited(pack):
    executor, _ = pack
    prompt = {"1": {"class_type": "AsyncDelay", "inputs": {"value": 1, "seconds": -1.0}}, "9": _show("1")}
    ok, _, _, node_errors = executor.validate(prompt)
    assert not ok
    assert node_errors["1"]["errors"][0]["details"] == "seconds - seconds must not be negative"


def test_failing_async_node_reports_execution_error(pack):
    executor, _ = pack
    prompt = {"1": {"class_type": "AsyncFail", "inputs": {"value": 5}}, "9": _show("1")}
    sink = Recorder()
    result = executor.execute(prompt, "p", {}, sink)
    assert result.status == "error"
    error = sink.named("execution_error")[0]
    assert error["node_id"] == "1" and error["node_type"] == "AsyncFail"
    assert error["exception_type"] == "RuntimeError" and error["exception_message"] == "async failure 5\n"


# -- lists, hidden inputs -------------------------------------------------------------------------

def test_list_output_maps_the_consumer_and_input_is_list_gets_it_whole(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "MakeList", "inputs": {"start": 1, "count": 3}},
              "2": {"class_type": "IntAdd", "inputs": {"a": ["1", 0], "b": 10}},
              "3": {"class_type": "SumList", "inputs": {"values": ["2", 0]}},
              "9": _show("3")}
    result, _ = _run(executor, prompt)
    assert [c for c in calls if c[0] == "IntAdd"] == [("IntAdd", 1, 10), ("IntAdd", 2, 10), ("IntAdd", 3, 10)]
    assert result.outputs["9"] == {"value": [36]}


def test_hidden_inputs_prompt_extra_pnginfo_unique_id_dynprompt(pack):
    executor, _ = pack
    prompt = {"5": {"class_type": "HiddenProbe", "inputs": {"value": 1}}}
    result, _ = _run(executor, prompt, extra={"extra_pnginfo": {"workflow": {"x": 1}}})
    assert result.outputs["5"] == {"classes": ["HiddenProbe"], "pnginfo": [{"workflow": {"x": 1}}],
                                   "unique_id": ["5"], "original_is_prompt": [True]}


# -- VALIDATE_INPUTS / IS_CHANGED conventions -----------------------------------------------------

def test_plain_function_validate_inputs_gets_no_class_and_the_linked_types(pack):
    executor, calls = pack
    linked = {"1": {"class_type": "IntConst", "inputs": {"value": 3}},
              "2": {"class_type": "EvenOnly", "inputs": {"value": ["1", 0]}}, "9": _show("2")}
    ok, _, _, node_errors = executor.validate(linked)
    assert ok, node_errors
    assert ("VALIDATE_INPUTS", None, {"value": "INT"}) in calls      # linked value: None, its type given
    odd = {"2": {"class_type": "EvenOnly", "inputs": {"value": 13}}, "9": _show("2")}
    ok, _, _, node_errors = executor.validate(odd)                  # 13 > max 10, but VALIDATE_INPUTS decides
    assert not ok
    details = [e["details"] for e in node_errors["2"]["errors"]]
    assert details == ["value - 13 is odd", "input_types - 13 is odd"]   # ComfyUI: one error per input it got
    ok, _, _, _ = executor.validate({"2": {"class_type": "EvenOnly", "inputs": {"value": 12}}, "9": _show("2")})
    assert ok


def test_is_changed_gets_linked_inputs_as_none_and_a_constant_result_keeps_the_cache(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 3}},
              "2": {"class_type": "ChangedByConstant", "inputs": {"value": ["1", 0], "salt": "a"}},
              "9": _show("2")}
    _run(executor, prompt, "p1")
    assert ("IS_CHANGED", None, "a") in calls
    calls.clear()
    _run(executor, prompt, "p2")
    assert not any(c[0] == "ChangedByConstant" for c in calls)       # same IS_CHANGED: cached
    prompt["2"]["inputs"]["salt"] = "b"
    _run(executor, prompt, "p3")
    assert ("ChangedByConstant", 3) in calls


# -- partial execution, messages ------------------------------------------------------------------

def test_partial_execution_targets_run_only_those_outputs_and_empty_means_no_outputs(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 1}}, "2": {"class_type": "IntConst", "inputs": {"value": 2}},
              "8": _show("1"), "9": _show("2")}
    result = executor.execute(prompt, "p", {"partial_execution_targets": ["9"]}, Recorder())
    assert result.status == "success" and list(result.outputs) == ["9"] and ("IntConst", 1) not in calls
    ok, error, _, _ = executor.validate(prompt, [])
    assert not ok and error["type"] == "prompt_no_outputs" and error["message"] == "Prompt has no outputs"


def test_execution_cached_lists_cached_nodes_and_cached_outputs_report_their_ui(pack):
    executor, _ = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 1}}, "9": _show("1")}
    _run(executor, prompt, "p1")
    result, sink = _run(executor, prompt, "p2")
    assert sink.named("execution_cached")[0]["nodes"] == ["1", "9"]
    assert sink.named("executed")[0]["output"] == {"value": [1]} and sink.executed_nodes() == []
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]


# -- ExecutionBlocker -----------------------------------------------------------------------------

def test_execution_blocker_without_message_silently_skips_its_users(pack):
    executor, calls = pack
    prompt = {"1": {"class_type": "BlockIf", "inputs": {"value": 4, "block": True, "message": ""}},
              "2": {"class_type": "IntAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "8": _show("2"),
              "9": {"class_type": "HiddenProbe", "inputs": {"value": 1}}}
    result, sink = _run(executor, prompt)
    assert list(result.outputs) == ["9"] and not any(c[0] == "IntAdd" for c in calls)
    assert sink.named("execution_error") == []


def test_execution_blocker_with_message_reports_each_blocked_node_and_the_prompt_succeeds(pack):
    executor, _ = pack
    prompt = {"1": {"class_type": "BlockIf", "inputs": {"value": 4, "block": True, "message": "no image"}},
              "2": {"class_type": "IntAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "8": _show("2")}
    result, sink = _run(executor, prompt)
    errors = sink.named("execution_error")
    assert [(e["node_id"], e["exception_message"], e["exception_type"]) for e in errors] == [
        ("2", "Execution Blocked: no image", "ExecutionBlocked")]          # reported once, then silent downstream
    assert result.outputs == {} and "execution_error" not in [m[0] for m in result.messages]


def test_execution_error_messages_carry_comfyuis_tips(tmp_path):
    from diffmesh.errors import DeviceOutOfMemory
    from diffmesh.nodes.base import NodeDef, NodeSchema, inp

    def shapes(ctx, value):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (77x768 and 1024x320)")

    def oom(ctx, value):
        raise DeviceOutOfMemory("cuda:0 is full")

    registry = NodeRegistry([NodeDef(NodeSchema(name, name, "test", inputs=(inp("value", "INT"),), output_node=True), fn)
                             for name, fn in (("TinySampler", shapes), ("Big", oom))])
    executor = PromptExecutor(registry, None, Paths.build(tmp_path))
    message = executor.execute({"1": {"class_type": "TinySampler", "inputs": {"value": 1}}}, "a").error["exception_message"]
    assert message.startswith("mat1 and mat2 shapes") and message.endswith(
        'make sure the correct file(s) and type is selected.') and '\n\n\nTIPS: If you have any "Load CLIP"' in message
    message = executor.execute({"1": {"class_type": "Big", "inputs": {"value": 1}}}, "b").error["exception_message"]
    assert message == "cuda:0 is full\nThis error means you ran out of memory on your GPU.\n\nTIPS: If the workflow " \
                      "worked before you might have accidentally set the batch_size to a large number."


def test_interrupt_while_an_async_node_runs_stops_it(pack):
    import threading

    executor, calls = pack
    prompt = {"1": {"class_type": "AsyncDelay", "inputs": {"value": 1, "seconds": 30.0}}, "9": _show("1")}
    flag = threading.Event()
    timer = threading.Timer(0.3, flag.set)
    timer.start()
    result = executor.execute(prompt, "p", {}, Recorder(), flag)
    timer.cancel()
    assert result.status == "interrupted" and result.error["node_id"] == "1"
    assert ("start", "1") in calls and ("end", "1") not in calls      # cancelled, not waited for


# -- cycles ---------------------------------------------------------------------------------------

def test_a_cycle_in_the_submitted_prompt_fails_validation(pack):
    executor, _ = pack
    prompt = {"1": {"class_type": "IntAdd", "inputs": {"a": ["2", 0], "b": 1}},
              "2": {"class_type": "IntAdd", "inputs": {"a": ["1", 0], "b": 1}},
              "9": _show("2")}
    ok, error, _, node_errors = executor.validate(prompt)
    assert not ok and error["type"] == "prompt_outputs_failed_validation"
    reasons = [r for entry in node_errors.values() for r in entry["errors"]]
    assert reasons[0]["type"] == "exception_during_inner_validation"
    assert "Dependency cycle detected" in reasons[0]["details"]


def test_a_cycle_made_by_an_expansion_is_blamed_on_the_expanding_node(pack):
    executor, _ = pack
    prompt = {"1": {"class_type": "IntConst", "inputs": {"value": 1}},
              "5": {"class_type": "DynamicCycle", "inputs": {"value": ["1", 0]}}, "9": _show("5")}
    sink = Recorder()
    result = executor.execute(prompt, "p", {}, sink)
    assert result.status == "error"
    error = sink.named("execution_error")[0]
    assert error["node_id"] == "5" and error["node_type"] == "DynamicCycle" and error["prompt_id"] == "p"
    assert error["exception_type"] == "graph.DependencyCycleError" and error["current_inputs"] == []
    assert "5.first" in error["exception_message"] and "5.second" in error["exception_message"]
