"""A stand-in runtime for server tests that are about the protocol, not the pictures: prompts of
`Sleep` (an output node that waits and reports progress) and `Fail` (raises) nodes.
Selected with the hidden `diffmesh serve --runtime tests.e2e.fake_runtime:build` flag."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

NODES = {
    "Sleep": {"input": {"required": {"seconds": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 60.0}]}},
              "input_order": {"required": ["seconds"]}, "output": [], "output_is_list": [], "output_name": [],
              "name": "Sleep", "display_name": "Sleep", "description": "", "python_module": "tests",
              "category": "testing", "output_node": True},
    "Fail": {"input": {"required": {}}, "input_order": {"required": []}, "output": [], "output_is_list": [],
             "output_name": [], "name": "Fail", "display_name": "Fail", "description": "", "python_module": "tests",
             "category": "testing", "output_node": True},
}


class Registry:
    def to_object_info(self, paths):
        return NODES


@dataclass
class Result:
    status: str
    outputs: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    messages: list = field(default_factory=list)
    error: dict | None = None


class Executor:
    def validate(self, prompt):
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return (False, {"type": "invalid_prompt", "details": f"Node ID '#{node_id}'", "extra_info": {},
                                "message": "Cannot execute because a node is missing the class_type property."},
                        [], {})
            if node["class_type"] not in NODES:
                return (False, {"type": "invalid_prompt", "details": f"Node ID '#{node_id}'", "extra_info": {},
                                "message": f"Cannot execute because node {node['class_type']} does not exist."},
                        [], {})
        return True, None, list(prompt), {}

    def execute(self, prompt, prompt_id, extra_data, sink, interrupt):
        sink("execution_start", {"prompt_id": prompt_id})
        sink("execution_cached", {"nodes": [], "prompt_id": prompt_id})
        outputs = {}
        for node_id, node in prompt.items():
            sink("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})
            try:
                if node["class_type"] == "Fail":
                    raise ValueError("this node always fails")
                seconds = float(node.get("inputs", {}).get("seconds", 0))
                steps = 4
                for i in range(steps):
                    if interrupt.is_set():
                        sink("execution_interrupted", {"prompt_id": prompt_id, "node_id": node_id,
                                                       "node_type": node["class_type"], "executed": []})
                        return Result("interrupted")
                    time.sleep(seconds / steps)
                    import torch
                    sink("progress", {"value": i + 1, "max": steps, "prompt_id": prompt_id, "node": node_id,
                                      "x0": torch.zeros(1, 4, 8, 8)})
            except Exception as exc:
                sink("execution_error", {"prompt_id": prompt_id, "node_id": node_id, "node_type": node["class_type"],
                                         "executed": [], "exception_message": str(exc),
                                         "exception_type": type(exc).__name__,
                                         "traceback": traceback.format_exception(exc), "current_inputs": {},
                                         "current_outputs": []})
                return Result("error")
            ui = {"text": [f"{node_id} done"]}
            outputs[node_id] = ui
            sink("executed", {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id})
        sink("execution_success", {"prompt_id": prompt_id})
        return Result("success")


@dataclass
class FakeRuntime:
    paths: object
    registry: Registry = field(default_factory=Registry)
    executor: Executor = field(default_factory=Executor)
    engine: object = None


def build(args):
    from diffmesh.server.cli import build_paths

    return FakeRuntime(paths=build_paths(args))
