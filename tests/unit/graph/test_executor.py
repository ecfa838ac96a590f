import threading

import pytest

from diffmesh.config.paths import Paths
from diffmesh.graph.executor import PromptExecutor

from .toy_nodes import Recorder, toy_registry


def chain(label="v", a=1, b=2):
    return {"1": {"class_type": "Const", "inputs": {"value": a}},
            "2": {"class_type": "Const", "inputs": {"value": b}},
            "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
            "4": {"class_type": "Show", "inputs": {"value": ["3", 0], "label": label}}}


@pytest.fixture
def executor(tmp_path):
    return PromptExecutor(toy_registry(), engine=None, paths=Paths.build(tmp_path))


def test_runs_every_node_and_returns_the_output_ui(executor):
    sink = Recorder()
    result = executor.execute(chain(), "p1", {}, sink)
    assert result.status == "success"
    assert result.outputs == {"4": {"values": ["v=3"]}}
    assert result.meta["4"] == {"node_id": "4", "display_node": "4", "parent_node": None, "real_node_id": "4"}
    assert sorted(sink.executed_nodes()) == ["1", "2", "3", "4"]
    assert [m[0] for m in result.messages] == ["execution_start", "execution_cached", "execution_success"]
    assert all("timestamp" in m[1] and m[1]["prompt_id"] == "p1" for m in result.messages)


def test_rerun_with_one_changed_input_reexecutes_only_its_dependents(executor):
    executor.execute(chain(b=2), "p1", {}, Recorder())
    sink = Recorder()
    result = executor.execute(chain(b=5), "p2", {}, sink)
    assert result.outputs["4"] == {"values": ["v=6"]}
    assert sorted(sink.executed_nodes()) == ["2", "3", "4"]
    assert sink.named("execution_cached")[0]["nodes"] == ["1"]


def test_identical_rerun_runs_nothing_but_still_reports_cached_output_ui(executor):
    executor.execute(chain(), "p1", {}, Recorder())
    sink = Recorder()
    result = executor.execute(chain(), "p2", {}, sink)
    assert sink.executed_nodes() == []
    assert sink.named("executed") == [{"node": "4", "display_node": "4", "output": {"values": ["v=3"]},
                                       "prompt_id": "p2"}]
    assert result.outputs == {"4": {"values": ["v=3"]}}


def test_same_subgraph_under_new_ids_hits_the_cache(executor):
    executor.execute(chain(), "p1", {}, Recorder())
    renamed = {"a": {"class_type": "Const", "inputs": {"value": 1}},
               "b": {"class_type": "Const", "inputs": {"value": 2}},
               "c": {"class_type": "Add", "inputs": {"a": ["a", 0], "b": ["b", 0]}},
               "d": {"class_type": "Show", "inputs": {"value": ["c", 0], "label": "v"}}}
    sink = Recorder()
    executor.execute(renamed, "p2", {}, sink)
    assert sink.executed_nodes() == []


def test_cache_none_policy_reexecutes_everything(tmp_path):
    executor = PromptExecutor(toy_registry(), None, Paths.build(tmp_path), cache_policy="none")
    executor.execute(chain(), "p1", {}, Recorder())
    sink = Recorder()
    executor.execute(chain(), "p2", {}, sink)
    assert sorted(sink.executed_nodes()) == ["1", "2", "3", "4"]


def test_lru_policy_keeps_outputs_of_earlier_prompts(tmp_path):
    executor = PromptExecutor(toy_registry(), None, Paths.build(tmp_path), cache_policy="lru", cache_size=10)
    executor.execute(chain(a=1), "p1", {}, Recorder())
    executor.execute(chain(a=7), "p2", {}, Recorder())
    sink = Recorder()
    executor.execute(chain(a=1), "p3", {}, sink)
    assert sink.executed_nodes() == []


def test_classic_policy_forgets_outputs_not_in_the_current_prompt(executor):
    executor.execute(chain(a=1), "p1", {}, Recorder())
    executor.execute(chain(a=7), "p2", {}, Recorder())
    sink = Recorder()
    executor.execute(chain(a=1), "p3", {}, sink)
    assert sorted(sink.executed_nodes()) == ["1", "3", "4"]


def test_failing_node_reports_execution_error_and_executor_stays_usable(executor):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 4}},
              "2": {"class_type": "Fail", "inputs": {"a": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}
    sink = Recorder()
    result = executor.execute(prompt, "bad", {}, sink)
    assert result.status == "error"
    err = sink.named("execution_error")[0]
    assert err["node_id"] == "2" and err["node_type"] == "Fail"
    assert err["exception_type"] == "ValueError" and err["exception_message"] == "refusing 4\n"   # ComfyUI: "{ex}\n{tips}"
    assert err["executed"] == ["1"] and err["current_inputs"] == {"a": [4]}
    assert isinstance(err["traceback"], list) and err["traceback"]
    assert result.messages[-1][0] == "execution_error"
    assert executor.execute(chain(), "good", {}, Recorder()).status == "success"


def test_interrupt_before_a_node_stops_the_prompt(executor):
    flag = threading.Event()
    flag.set()
    sink = Recorder()
    result = executor.execute(chain(), "p", {}, sink, flag)
    assert result.status == "interrupted"
    assert sink.named("execution_interrupted")[0]["executed"] == []
    assert not flag.is_set()                     # the interrupt is consumed


def test_interrupt_during_progress_stops_at_the_next_step(executor):
    flag = threading.Event()
    prompt = {"1": {"class_type": "Steps", "inputs": {"steps": 5}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}

    def sink(event, data):
        if event == "progress" and data["value"] == 2:
            flag.set()
    result = executor.execute(prompt, "p", {}, sink, flag)
    assert result.status == "interrupted"


def test_progress_events_carry_value_max_and_node(executor):
    prompt = {"1": {"class_type": "Steps", "inputs": {"steps": 3}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    sink = Recorder()
    executor.execute(prompt, "p", {}, sink)
    assert [(d["value"], d["max"], d["node"]) for d in sink.named("progress")] == [(1, 3, "1"), (2, 3, "1"), (3, 3, "1")]


def test_list_outputs_map_the_consumer_once_per_element_and_merge_ui(executor):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 10}},
              "2": {"class_type": "Split", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 100}},
              "4": {"class_type": "Show", "inputs": {"value": ["3", 0]}}}
    result = executor.execute(prompt, "p", {}, Recorder())
    assert result.outputs["4"] == {"values": ["v=110", "v=111", "v=112"]}


def test_only_nodes_upstream_of_outputs_run(executor):
    prompt = chain()
    prompt["9"] = {"class_type": "Fail", "inputs": {"a": 1}}
    sink = Recorder()
    assert executor.execute(prompt, "p", {}, sink).status == "success"
    assert "9" not in sink.executed_nodes()


def test_event_order_for_one_node(executor):
    sink = Recorder()
    executor.execute({"1": {"class_type": "Const", "inputs": {"value": 1}},
                      "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}, "p", {}, sink)
    names = [e for e, _ in sink.events if e != "progress_state"]
    assert names == ["execution_start", "execution_cached", "executing", "executing", "executed", "execution_success"]
    assert sink.events[2][0] == "progress_state" and sink.events[2][1]["nodes"]["1"]["state"] == "running"


def test_invalid_prompt_is_not_executed(executor):
    result = executor.execute({"1": {"class_type": "Show", "inputs": {}}}, "p", {}, Recorder())
    assert result.status == "error"
    assert result.validation_error["type"] == "prompt_outputs_failed_validation"


def _gate_registry(barrier: threading.Barrier, seen: list):
    """Toy nodes plus `Gate`, which waits until every concurrent prompt reached it."""
    from diffmesh.nodes.base import NodeDef, NodeSchema, inp, out
    from diffmesh.nodes.registry import NodeRegistry

    from .toy_nodes import TOY_NODES

    def gate(ctx, value):
        ctx.state.setdefault("calls", []).append(value)
        seen.append((ctx.engine, id(ctx.state), list(ctx.state["calls"])))
        barrier.wait(timeout=10)
        return (value,)

    schema = NodeSchema("Gate", "Gate", "test", inputs=(inp("value", "INT", default=0),), outputs=out("INT"))
    return NodeRegistry(TOY_NODES + (NodeDef(schema, gate),))


def _gated(value):
    return {"1": {"class_type": "Const", "inputs": {"value": value}},
            "2": {"class_type": "Gate", "inputs": {"value": ["1", 0]}},
            "3": {"class_type": "Show", "inputs": {"value": ["2", 0]}}}


def _run_at_once(executor, prompts: dict, engines: dict) -> dict:
    results = {}

    def one(pid):
        results[pid] = executor.execute(prompts[pid], pid, {}, Recorder(), engine=engines[pid])

    threads = [threading.Thread(target=one, args=(pid,)) for pid in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_prompts_run_at_once_each_with_its_own_engine_and_node_state(tmp_path):
    barrier, seen = threading.Barrier(2), []
    executor = PromptExecutor(_gate_registry(barrier, seen), engine="default", paths=Paths.build(tmp_path))
    results = _run_at_once(executor, {"a": _gated(1), "b": _gated(2)}, {"a": "lease-a", "b": "lease-b"})
    assert not barrier.broken                                   # both prompts were inside Gate together
    assert results["a"].outputs == {"3": {"values": ["v=1"]}} and results["b"].outputs == {"3": {"values": ["v=2"]}}
    assert sorted(engine for engine, _, _ in seen) == ["lease-a", "lease-b"]
    assert len({state for _, state, _ in seen}) == 2            # same node id and class, not the same instance state
    assert sorted(calls for _, _, calls in seen) == [[1], [2]]


def test_a_prompt_starting_meanwhile_does_not_evict_the_running_prompts_outputs(tmp_path):
    barrier, seen = threading.Barrier(2), []
    executor = PromptExecutor(_gate_registry(barrier, seen), engine=None, paths=Paths.build(tmp_path))
    _run_at_once(executor, {"a": _gated(1), "b": _gated(2)}, {"a": None, "b": None})
    assert len(executor.cache) == 6                             # classic policy: both prompts' outputs kept
    sink = Recorder()
    result = executor.execute(_gated(1), "again", {}, sink)
    assert result.outputs == {"3": {"values": ["v=1"]}} and sink.executed_nodes() == []
    assert len(executor.cache) == 3                             # sequential use: only the current prompt's


def test_node_state_is_kept_for_the_next_prompt_once_the_holder_finished(tmp_path):
    barrier, seen = threading.Barrier(1), []
    executor = PromptExecutor(_gate_registry(barrier, seen), engine=None, paths=Paths.build(tmp_path))
    executor.execute(_gated(1), "p1", {}, Recorder())
    executor.execute(_gated(2), "p2", {}, Recorder())
    assert seen[0][1] == seen[1][1] and seen[1][2] == [1, 2]
