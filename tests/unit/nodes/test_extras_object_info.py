"""/object_info of the comfy_extras nodes against ComfyUI's: the entries below were written out from
ComfyUI's V3 schemas (comfy_api/latest/_io.py as_dict, get_v1_info) of July 2026, read from
comfy_extras/nodes_logic.py, nodes_math.py, nodes_primitive.py, nodes_preview_any.py,
nodes_resolution.py, nodes_images.py, nodes_post_processing.py and nodes_string.py."""

from __future__ import annotations

import pytest

from diffmesh.nodes import extras_images, extras_string
from diffmesh.nodes.registry import build_registry

MATCH = {"template_id": "switch", "allowed_types": "*"}
COMFYUI = {
    "ComfySwitchNode": ({"required": {"switch": ["BOOLEAN", {}], "on_false": ["COMFY_MATCHTYPE_V3", {"lazy": True, "template": MATCH}],
                                      "on_true": ["COMFY_MATCHTYPE_V3", {"lazy": True, "template": MATCH}]}},
                        ["COMFY_MATCHTYPE_V3"], ["output"], "utilities/logic"),
    "ComfyMathExpression": ({"required": {
        "expression": ["STRING", {"default": "a + b", "multiline": True}],
        "values": ["COMFY_AUTOGROW_V3", {"template": {"input": {"required": {"value": ["FLOAT,INT,BOOLEAN", {}]}},
                                                      "names": list("abcdefghijklmnopqrstuvwxyz"), "min": 1}}]}},
        ["FLOAT", "INT", "BOOLEAN"], ["FLOAT", "INT", "BOOL"], "utilities"),
    "PrimitiveInt": ({"required": {"value": ["INT", {"min": -9223372036854775807, "max": 9223372036854775807,
                                                     "control_after_generate": "fixed"}]}}, ["INT"], ["INT"],
                     "utilities/primitive"),
    "PrimitiveFloat": ({"required": {"value": ["FLOAT", {"min": -9223372036854775807, "max": 9223372036854775807,
                                                         "step": 0.1}]}}, ["FLOAT"], ["FLOAT"], "utilities/primitive"),
    "PrimitiveStringMultiline": ({"required": {"value": ["STRING", {"multiline": True}]}}, ["STRING"], ["STRING"],
                                 "utilities/primitive"),
    "PrimitiveBoolean": ({"required": {"value": ["BOOLEAN", {}]}}, ["BOOLEAN"], ["BOOLEAN"], "utilities/primitive"),
    "PreviewAny": ({"required": {"source": ["*", {}]}}, ["STRING"], ["STRING"], "utilities"),
    "ResolutionSelector": ({"required": {
        "aspect_ratio": ["COMBO", {"tooltip": "The aspect ratio for the output dimensions.", "default": "1:1 (Square)",
                                   "multiselect": False, "options": [
                                       "1:1 (Square)", "2:3 (Portrait Photo)", "3:2 (Photo)", "3:4 (Portrait Standard)",
                                       "4:3 (Standard)", "9:16 (Portrait Widescreen)", "16:9 (Widescreen)",
                                       "21:9 (Ultrawide)"]}],
        "megapixels": ["FLOAT", {"tooltip": "Target total megapixels. 1.0 MP ≈ 1024x1024 for square.", "default": 1.0,
                                 "min": 0.1, "max": 16.0, "step": 0.1}],
        "multiple": ["INT", {"tooltip": "Nearest multiple of the result to set the selected resolution to.",
                             "advanced": True, "default": 8, "min": 8, "max": 128, "step": 4}]}},
        ["INT", "INT"], ["width", "height"], "utilities"),
    "GetImageSize": ({"required": {"image": ["IMAGE", {}]}, "hidden": {"unique_id": "UNIQUE_ID"}},
                     ["INT", "INT", "INT"], ["width", "height", "batch_size"], "image"),
    "ImageFromBatch": ({"required": {"image": ["IMAGE", {}], "batch_index": ["INT", {"default": 0, "min": -16384, "max": 16384}],
                                     "length": ["INT", {"default": 1, "min": 1, "max": 4096}]}},
                       ["IMAGE"], ["IMAGE"], "image/batch"),
    "BatchImagesNode": ({"required": {"images": ["COMFY_AUTOGROW_V3", {"template": {
        "input": {"required": {"image": ["IMAGE", {}]}}, "prefix": "image", "min": 1, "max": 50}}]}},
        ["IMAGE"], ["IMAGE"], "image/batch"),
    "StringConcatenate": ({"required": {"string_a": ["STRING", {"multiline": True}], "string_b": ["STRING", {"multiline": True}],
                                        "delimiter": ["STRING", {"default": "", "multiline": False}]}},
                          ["STRING"], ["STRING"], "text"),
    "RegexReplace": ({"required": {"string": ["STRING", {"multiline": True}], "regex_pattern": ["STRING", {"multiline": True}],
                                   "replace": ["STRING", {"multiline": True}]},
                      "optional": {"case_insensitive": ["BOOLEAN", {"advanced": True, "default": True}],
                                   "multiline": ["BOOLEAN", {"advanced": True, "default": False}],
                                   "dotall": ["BOOLEAN", {"tooltip": extras_string.DOTALL_TIP, "advanced": True, "default": False}],
                                   "count": ["INT", {"tooltip": extras_string.COUNT_TIP, "advanced": True, "default": 0,
                                                     "min": 0, "max": 100}]}},
                     ["STRING"], ["STRING"], "text"),
    "ImageCompare": ({"required": {"compare_view": ["IMAGECOMPARE", {"socketless": True}]},
                      "optional": {"image_a": ["IMAGE", {}], "image_b": ["IMAGE", {}]}}, [], [], "image"),
    "LatentCompositeMasked": ({"required": {"destination": ["LATENT", {}], "source": ["LATENT", {}],
                                            "x": ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}],
                                            "y": ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}],
                                            "resize_source": ["BOOLEAN", {"default": False}]},
                               "optional": {"mask": ["MASK", {}]}}, ["LATENT"], ["LATENT"], "model/latent"),
    "ImageColorToMask": ({"required": {"image": ["IMAGE", {}], "color": ["INT", {"default": 0, "min": 0, "max": 16777215,
                                                                                  "step": 1, "display": "number"}]}},
                         ["MASK"], ["MASK"], "image/mask"),
    "GrowMask": ({"required": {"mask": ["MASK", {}], "expand": ["INT", {"default": 0, "min": -16384, "max": 16384, "step": 1}],
                               "tapered_corners": ["BOOLEAN", {"advanced": True, "default": True}]}},
                 ["MASK"], ["MASK"], "image/mask"),
    "MaskPreview": ({"required": {"mask": ["MASK", {}]}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}},
                    ["MASK"], ["mask"], "image/mask"),
    "LatentBatchSeedBehavior": ({"required": {"samples": ["LATENT", {}], "seed_behavior": [
        "COMBO", {"default": "fixed", "multiselect": False, "options": ["random", "fixed"]}]}},
        ["LATENT"], ["LATENT"], "model/latent/advanced"),
    "RebatchLatents": ({"required": {"latents": ["LATENT", {}], "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}]}},
                       ["LATENT"], ["LATENT"], "model/latent/batch"),
    "ManualSigmas": ({"required": {"sigmas": ["STRING", {"default": "1, 0.5", "multiline": False}]}},
                     ["SIGMAS"], ["SIGMAS"], "model/sampling/sigmas"),
}
SAVE_FORMAT = ["COMFY_DYNAMICCOMBO_V3", {"tooltip": "The file format in which to save the image.", "options": [
    {"key": "png", "inputs": {"required": {
        "bit_depth": ["COMBO", {"advanced": True, "default": "8-bit", "multiselect": False, "options": ["8-bit", "16-bit"]}],
        "input_color_space": ["COMBO", {"advanced": True, "default": "sRGB", "multiselect": False, "options": ["sRGB"]}]}}},
    {"key": "exr", "inputs": {"required": {
        "bit_depth": ["COMBO", {"advanced": True, "default": "32-bit float", "multiselect": False,
                                "options": ["32-bit float"]}],
        "input_color_space": ["COMBO", {"tooltip": extras_images.EXR_COLOR_TOOLTIP, "advanced": True, "default": "sRGB",
                                        "multiselect": False, "options": ["sRGB", "HDR", "linear"]}]}}}]}]


@pytest.fixture(scope="module")
def registry():
    return build_registry()


@pytest.mark.parametrize("name", sorted(COMFYUI))
def test_object_info_inputs_and_outputs_are_comfyuis(registry, name):
    inputs, output, output_name, category = COMFYUI[name]
    info = registry[name].schema.to_object_info(None)
    assert info["input"] == inputs
    assert info["input_order"] == {section: list(value) for section, value in inputs.items()}
    assert (info["output"], info["output_name"], info["category"]) == (output, output_name, category)


def test_switch_declares_its_matchtype_output_and_is_experimental(registry):
    info = registry["ComfySwitchNode"].schema.to_object_info(None)
    assert info["output_matchtypes"] == ["switch"] and info["experimental"] is True
    assert info["display_name"] == "If/Else Switch" and info["python_module"] == "comfy_extras.nodes_logic"


def test_save_image_advanced_has_comfyuis_dynamic_format_combo(registry):
    info = registry["SaveImageAdvanced"].schema.to_object_info(None)
    assert info["input"]["required"]["format"] == SAVE_FORMAT
    assert info["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert info["output_node"] is True and info["output_name"] == ["images"]



def test_resize_image_mask_declares_comfyuis_inputs(registry):
    info = registry["ResizeImageMaskNode"].schema.to_object_info(None)
    required = info["input"]["required"]
    assert list(required) == ["input", "resize_type", "scale_method"]
    assert required["input"] == ["COMFY_MATCHTYPE_V3", {"template": {"template_id": "input_type",
                                                                     "allowed_types": "IMAGE,MASK"}}]
    options = required["resize_type"][1]["options"]
    assert [o["key"] for o in options] == ["scale dimensions", "scale by multiplier", "scale longer dimension",
                                           "scale shorter dimension", "scale width", "scale height",
                                           "scale total pixels", "match size", "scale to multiple"]
    assert options[1]["inputs"]["required"]["multiplier"] == ["FLOAT", {
        "tooltip": "Scale factor (e.g., 2.0 doubles size, 0.5 halves size).", "default": 1.0, "min": 0.01,
        "max": 8.0, "step": 0.01}]
    assert list(options[7]["inputs"]["required"]) == ["match", "crop"]
    assert required["scale_method"][1]["options"] == ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
    assert (info["output"], info["output_name"], info["output_matchtypes"]) == (
        ["COMFY_MATCHTYPE_V3"], ["resized"], ["input_type"])


def test_rebatch_nodes_take_and_give_lists(registry):
    for name in ("RebatchLatents", "RebatchImages"):
        info = registry[name].schema.to_object_info(None)
        assert info["is_input_list"] is True and info["output_is_list"] == [True]
