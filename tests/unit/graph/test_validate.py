import pytest

from diffmesh.config.paths import Paths
from diffmesh.graph.validate import types_compatible, validate_prompt
from diffmesh.nodes.registry import NodeRegistry, build_registry

from .toy_nodes import TOY_NODES


@pytest.fixture
def registry():
    return NodeRegistry(TOY_NODES + tuple(build_registry()[n] for n in ("EmptyLatentImage", "KSampler", "LoadImage",
                                                                          "SaveImage", "VAEDecode")))


@pytest.fixture
def paths(tmp_path):
    p = Paths.build(tmp_path)
    p.ensure_dirs()
    return p


def only_error(node_errors, node_id):
    errors = node_errors[node_id]["errors"]
    assert len(errors) == 1
    return errors[0]


def test_missing_class_type_is_invalid_prompt(registry, paths):
    ok, error, outputs, node_errors = validate_prompt({"5": {"inputs": {}}}, registry, paths)
    assert not ok and outputs == [] and node_errors == {}
    assert error == {"type": "invalid_prompt", "message": "Cannot execute because a node is missing the class_type property.",
                     "details": "Node ID '#5'", "extra_info": {}}


def test_unknown_class_is_invalid_prompt(registry, paths):
    ok, error, _, _ = validate_prompt({"5": {"class_type": "Nope", "inputs": {}}}, registry, paths)
    assert error["message"] == "Cannot execute because node Nope does not exist."
    assert error["details"] == "Node ID '#5'"


def test_prompt_without_output_nodes(registry, paths):
    ok, error, _, _ = validate_prompt({"1": {"class_type": "Const", "inputs": {"value": 1}}}, registry, paths)
    assert error == {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}}


def test_required_input_missing(registry, paths):
    ok, error, _, node_errors = validate_prompt({"1": {"class_type": "Show", "inputs": {}}}, registry, paths)
    assert error["type"] == "prompt_outputs_failed_validation"
    assert error["message"] == "Prompt outputs failed validation"
    assert error["details"] == "Required input is missing: value"
    assert node_errors == {"1": {"errors": [{"type": "required_input_missing", "message": "Required input is missing",
                                             "details": "value", "extra_info": {"input_name": "value"}}],
                                 "dependent_outputs": ["1"], "class_type": "Show"}}


def test_bad_linked_input(registry, paths):
    _, _, _, errs = validate_prompt({"1": {"class_type": "Show", "inputs": {"value": ["1", 0, 3]}}}, registry, paths)
    e = only_error(errs, "1")
    assert e["type"] == "bad_linked_input"
    assert e["message"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]"
    assert e["extra_info"] == {"input_name": "value", "input_config": ["INT"], "received_value": ["1", 0, 3]}


def test_return_type_mismatch(registry, paths):
    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    _, _, _, errs = validate_prompt(prompt, registry, paths)
    e = only_error(errs, "2")
    assert e["type"] == "return_type_mismatch"
    assert e["details"] == "value, received_type(LATENT) mismatch input_type(INT)"
    assert e["extra_info"]["received_type"] == "LATENT" and e["extra_info"]["linked_node"] == ["1", 0]


def test_link_to_missing_node_is_inner_validation_exception(registry, paths):
    _, _, _, errs = validate_prompt({"1": {"class_type": "Show", "inputs": {"value": ["9", 0]}}}, registry, paths)
    e = only_error(errs, "1")
    assert e["type"] == "exception_during_inner_validation"
    assert e["message"] == "Exception when validating inner node"
    assert e["extra_info"]["linked_node"] == ["9", 0]


def test_invalid_input_type(registry, paths):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": "abc"}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    _, error, _, errs = validate_prompt(prompt, registry, paths)
    e = only_error(errs, "1")
    assert e["type"] == "invalid_input_type"
    assert e["message"] == "Failed to convert an input value to a INT value"
    assert e["details"].startswith("value, abc, invalid literal")
    assert errs["1"]["dependent_outputs"] == ["2"] and "2" not in errs      # consumers fail without own errors


@pytest.mark.parametrize("value,kind,message", [
    (-101, "value_smaller_than_min", "Value -101 smaller than min of -100"),
    (101, "value_bigger_than_max", "Value 101 bigger than max of 100")])
def test_min_and_max(registry, paths, value, kind, message):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": value}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    _, _, _, errs = validate_prompt(prompt, registry, paths)
    e = only_error(errs, "1")
    assert (e["type"], e["message"], e["details"]) == (kind, message, "value")
    assert e["extra_info"] == {"input_name": "value", "input_config": ["INT", {"default": 0, "min": -100, "max": 100}],
                               "received_value": value}


def test_constants_are_coerced_in_place(registry, paths):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": "7"}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0], "label": 5}}}
    ok, _, outputs, _ = validate_prompt(prompt, registry, paths)
    assert ok and outputs == ["2"]
    assert prompt["1"]["inputs"]["value"] == 7 and prompt["2"]["inputs"]["label"] == "5"


def test_value_not_in_list_long_list_hides_config(registry, paths):
    prompt = {"1": {"class_type": "KSampler", "inputs": {"sampler_name": "nope", "scheduler": "normal"}}}
    validator_prompt = {**prompt, "2": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["1", 0]}}}
    _, _, _, errs = validate_prompt({**validator_prompt, "3": {"class_type": "SaveImage",
                                                              "inputs": {"images": ["2", 0]}}}, registry, paths)
    sampler_errors = [e for e in errs["1"]["errors"] if e["type"] == "value_not_in_list"]
    assert sampler_errors[0]["details"] == "sampler_name: 'nope' not in (list of length 44)"
    assert sampler_errors[0]["extra_info"] == {"input_name": "sampler_name", "input_config": None,
                                               "received_value": "nope"}


def test_value_not_in_short_list_names_the_options(registry, paths):
    prompt = {"1": {"class_type": "KSampler", "inputs": {"scheduler": "bogus"}},
              "2": {"class_type": "VAEDecode", "inputs": {"samples": ["1", 0], "vae": ["1", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}}
    _, _, _, errs = validate_prompt(prompt, registry, paths)
    e = [e for e in errs["1"]["errors"] if e["type"] == "value_not_in_list"][0]
    assert e["details"].startswith("scheduler: 'bogus' not in ['simple', 'sgm_uniform'")
    assert e["extra_info"]["input_config"][0][0] == "simple"


def test_custom_validation_failed(registry, paths):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    _, _, _, errs = validate_prompt(prompt, registry, paths)
    e = only_error(errs, "1")
    assert e == {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                 "details": "image - Invalid image file: missing.png", "extra_info": {"input_name": "image"}}


def test_some_outputs_valid_runs_only_those(registry, paths):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {}}}
    ok, error, outputs, errs = validate_prompt(prompt, registry, paths)
    assert ok and error is None and outputs == ["2"] and list(errs) == ["3"]


def test_partial_execution_targets_restrict_outputs(registry, paths):
    prompt = {"1": {"class_type": "Const", "inputs": {"value": 1}},
              "2": {"class_type": "Show", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"value": ["1", 0]}}}
    assert validate_prompt(prompt, registry, paths, ["3"])[2] == ["3"]


def test_type_compatibility_rules():
    assert types_compatible("INT", "INT") and types_compatible("*", "LATENT") and types_compatible("IMAGE", "*")
    assert types_compatible("IMAGE,MASK", "MASK") and not types_compatible("IMAGE", "LATENT")
    assert types_compatible(["a", "b"], "COMBO")
