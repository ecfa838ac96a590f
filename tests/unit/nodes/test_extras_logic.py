"""ComfyUI's utility nodes (If/Else switch, Math Expression, primitives, Preview as Text, Resolution
Selector, Not/And/Or) run through the real executor and validator, and the safe expression evaluator."""

from __future__ import annotations

import json

import pytest
import torch

from diffmesh.config.paths import Paths
from diffmesh.graph.executor import PromptExecutor
from diffmesh.nodes.extras_logic import preview_text, resolution_selector
from diffmesh.nodes.extras_math import ExpressionError, evaluate, math_expression
from diffmesh.nodes.registry import build_registry


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.fixture
def executor(registry, tmp_path):
    return PromptExecutor(registry, engine=None, paths=Paths.build(tmp_path))


def _switch_prompt(switch: bool) -> dict:
    return {"1": {"class_type": "PrimitiveBoolean", "inputs": {"value": switch}},
            "2": {"class_type": "PrimitiveInt", "inputs": {"value": 5}},
            "3": {"class_type": "PrimitiveFloat", "inputs": {"value": 2.5}},
            # the false branch: a math expression that fails if it is ever run
            "4": {"class_type": "ComfyMathExpression", "inputs": {"expression": "a / 0", "values.a": ["3", 0]}},
            "5": {"class_type": "ComfySwitchNode", "inputs": {"switch": ["1", 0], "on_true": ["2", 0],
                                                              "on_false": ["4", 0]}},
            "6": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}}


def test_switch_runs_only_the_selected_lazy_branch(executor):
    result = executor.execute(_switch_prompt(True), "p1")
    assert result.status == "success", result.error
    assert result.outputs["6"] == {"text": ["5"]}
    assert "4" not in result.executed and "3" not in result.executed


def test_switch_false_branch_runs_the_expression_and_its_error_names_the_node(executor):
    result = executor.execute(_switch_prompt(False), "p2")
    assert result.status == "error" and result.error["node_id"] == "4"
    assert "division by zero" in result.error["exception_message"]


def test_math_expression_with_grown_inputs_through_the_executor(executor):
    prompt = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
              "2": {"class_type": "PrimitiveFloat", "inputs": {"value": 0.5}},
              "3": {"class_type": "ComfyMathExpression",
                    "inputs": {"expression": "max(values) * b + a // 2", "values.a": ["1", 0], "values.b": ["2", 0]}},
              "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
              "5": {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}}
    result = executor.execute(prompt, "p3")
    assert result.status == "success", result.error
    assert result.outputs["4"] == {"text": ["6"]} and result.outputs["5"] == {"text": ["True"]}   # 7*0.5+3 = 6.5


def test_math_expression_without_its_first_grown_input_fails_validation(executor):
    prompt = {"3": {"class_type": "ComfyMathExpression", "inputs": {"expression": "1"}},
              "4": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}}}
    result = executor.execute(prompt, "p4")
    errors = result.node_errors["3"]["errors"]
    assert [(e["type"], e["details"], e["extra_info"]["input_name"]) for e in errors] == [
        ("required_input_missing", "a", "values.a")]          # ComfyUI names a dynamic input by its last part


def test_and_or_not_follow_python_truthiness(executor):
    prompt = {"1": {"class_type": "PrimitiveString", "inputs": {"value": ""}},
              "2": {"class_type": "PrimitiveInt", "inputs": {"value": 3}},
              "3": {"class_type": "ComfyAndNode", "inputs": {"values.value0": ["1", 0], "values.value1": ["2", 0]}},
              "4": {"class_type": "ComfyOrNode", "inputs": {"values.value0": ["1", 0], "values.value1": ["2", 0]}},
              "5": {"class_type": "ComfyNotNode", "inputs": {"value": ["1", 0]}},
              "6": {"class_type": "PreviewAny", "inputs": {"source": ["3", 0]}},
              "7": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
              "8": {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}}
    result = executor.execute(prompt, "p5")
    assert [result.outputs[k]["text"][0] for k in ("6", "7", "8")] == ["False", "True", "True"]


@pytest.mark.parametrize("expression, expected", [
    ("a + b * 2", 7), ("(a + b) ** 2", 25), ("a / b", 1.5), ("a // b", 1), ("-a % b", 1),
    ("sum(values)", 5), ("sum(a, b, 10)", 15), ("pow(b, 3)", 8), ("sqrt(16) + floor(2.7) + ceil(0.1)", 7),
    ("a if a > b else b", 3), ("a > 1 and b < 1", False), ("1 < a <= 3", True), ("values[1]", 2),
    ("round(2.567, 2)", 2.57), ("int(3.9) + float(1)", 4.0), ("a & 1 | 4", 5), ("min(a, b, 0.5)", 0.5),
])
def test_evaluate_supports_simpleevals_operations(expression, expected):
    assert evaluate(expression, {"a": 3, "b": 2, "values": [3, 2]}) == expected


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "the function '__import__' is not allowed"),
    ("a.__class__", "Attribute is not allowed"),
    ("open('x')", "the function 'open' is not allowed"),
    ("[x for x in values]", "ListComp is not allowed"),
    ("zz + 1", "'zz' is not defined"),
    ("2 ** 5000000", "don't want to evaluate"),
    ("lambda: 1", "Lambda is not allowed"),
])
def test_evaluate_refuses_everything_else(expression, message):
    with pytest.raises(ExpressionError, match=message):
        evaluate(expression, {"a": 1, "values": [1]})


def test_math_expression_checks_its_result_like_comfyui():
    assert math_expression(None, "a * 2", **{"values.a": 1.25}) == (2.5, 2, True)
    assert math_expression(None, "a > 2", **{"values.a": 1}) == (0.0, 0, False)
    with pytest.raises(ValueError, match="Exponent 5000 exceeds maximum allowed"):
        math_expression(None, "pow(a, 5000)", **{"values.a": 2})
    with pytest.raises(ValueError, match="must evaluate to a numeric result, got str"):
        math_expression(None, "'x'", **{"values.a": 1})
    with pytest.raises(ValueError, match="non-finite result"):
        math_expression(None, "a * 1e308 * 10", **{"values.a": 1.0})
    with pytest.raises(ValueError, match="Expression cannot be empty"):
        math_expression(None, "  ", **{"values.a": 1})


@pytest.mark.parametrize("ratio, megapixels, multiple, expected", [
    ("1:1 (Square)", 1.0, 8, (1024, 1024)), ("16:9 (Widescreen)", 1.0, 8, (1368, 768)),
    ("2:3 (Portrait Photo)", 0.5, 64, (576, 896)), ("21:9 (Ultrawide)", 2.0, 16, (2208, 944)),
])
def test_resolution_selector_rounds_to_the_multiple(ratio, megapixels, multiple, expected):
    assert resolution_selector(None, ratio, megapixels, multiple) == expected


def test_preview_text_formats_like_comfyui():
    assert preview_text("hi") == "hi" and preview_text(2.5) == "2.5" and preview_text(None) == "None"
    assert preview_text({"a": [1, 2]}) == json.dumps({"a": [1, 2]}, indent=4)
    assert preview_text(torch.zeros(2)) == "tensor([0., 0.])"
