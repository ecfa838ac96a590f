"""comfy_extras image and text nodes on tiny tensors and strings, with ComfyUI's results written out,
and Save Image (Advanced) files read back."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import torch
from PIL import Image

from diffmesh.config.paths import Paths
from diffmesh.nodes import extras_images as im
from diffmesh.nodes import extras_string as st
from diffmesh.nodes.base import NodeContext


@pytest.fixture
def ctx(tmp_path):
    paths = Paths.build(tmp_path)
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    return NodeContext(engine=None, paths=paths, node_id="1", prompt={}, extra_data={}, state={})


def _ramp(b=3, h=2, w=4, c=3):
    return torch.arange(b * h * w * c, dtype=torch.float32).reshape(b, h, w, c) / (b * h * w * c)


def test_get_image_size_and_batch_selection(ctx):
    image = _ramp()
    assert im.get_image_size(ctx, image) == (4, 2, 3)
    (last,) = im.image_from_batch(ctx, image, -1, 5)
    assert torch.equal(last, image[2:])
    (middle,) = im.image_from_batch(ctx, image, 1, 1)
    assert torch.equal(middle, image[1:2])
    (repeated,) = im.repeat_image_batch(ctx, image[:1], 3)
    assert repeated.shape == (3, 2, 4, 3) and torch.equal(repeated[2], image[0])


def test_rotate_flip_and_crop_move_pixels_like_comfyui(ctx):
    image = torch.arange(6.0).reshape(1, 2, 3, 1)                  # rows [0 1 2], [3 4 5]
    (turned,) = im.image_rotate(ctx, image, "90 degrees")
    assert turned[0, :, :, 0].tolist() == [[3.0, 0.0], [4.0, 1.0], [5.0, 2.0]]     # clockwise
    (flipped,) = im.image_flip(ctx, image, "y-axis: horizontally")
    assert flipped[0, :, :, 0].tolist() == [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]
    (cropped,) = im.image_crop(ctx, image, 2, 5, 9, 0)             # x clamps to the last column
    assert cropped[0, :, :, 0].tolist() == [[2.0], [5.0]]


def test_add_noise_is_seeded_and_clipped(ctx):
    image = torch.full((1, 4, 4, 3), 0.5)
    (a,) = im.image_add_noise(ctx, image, 7, 1.0)
    (b,) = im.image_add_noise(ctx, image, 7, 1.0)
    expected = torch.clip(image + torch.randn(image.size(), generator=torch.manual_seed(7)), 0, 1)
    assert torch.equal(a, b) and torch.equal(a, expected)


def test_scale_to_max_dimension_keeps_the_aspect(ctx):
    (out,) = im.scale_to_max_dimension(ctx, torch.rand(1, 10, 20, 3), "bilinear", 8)
    assert out.shape == (1, 4, 8, 3)


def test_batch_images_pads_alpha_and_resizes_to_the_first(ctx):
    rgba = torch.rand(1, 4, 4, 4)
    rgb = torch.rand(2, 8, 8, 3)
    (out,) = im.batch_images_node(ctx, **{"images.image1": rgb, "images.image0": rgba})
    assert out.shape == (3, 4, 4, 4)
    assert torch.equal(out[0], rgba[0]) and torch.all(out[1:, :, :, 3] == 1.0)


def test_save_image_advanced_png_8_and_16_bit_with_metadata(ctx):
    image = torch.linspace(0, 1, 2 * 3 * 3).reshape(1, 2, 3, 3)
    result = im.save_image_advanced(ctx, image, "adv", prompt={"1": {}}, extra_pnginfo={"workflow": {"x": 1}},
                                    **{"format": "png", "format.bit_depth": "8-bit",
                                       "format.input_color_space": "sRGB"})
    saved = result["ui"]["images"][0]
    assert saved == {"filename": "adv_00001.png", "subfolder": "", "type": "output"}
    assert result["result"][0] is image
    picture = Image.open(ctx.paths.output_dir / saved["filename"])
    assert picture.text == {"prompt": '{"1": {}}', "workflow": '{"x": 1}'}
    assert np.array_equal(np.array(picture), (image[0] * 255).to(torch.int32).numpy().astype(np.uint8))
    im.save_image_advanced(ctx, image, "adv", **{"format": "png", "format.bit_depth": "16-bit",
                                                 "format.input_color_space": "sRGB"})
    data = (ctx.paths.output_dir / "adv_00002.png").read_bytes()
    assert data[24] == 16                                          # IHDR bit depth


def test_save_image_advanced_exr_is_linear_float_with_the_prompt_in_its_header(ctx):
    image = torch.tensor([[[[0.0, 0.5, 1.0]]]])
    im.save_image_advanced(ctx, image, "hdr", prompt={"p": 1},
                           **{"format": "exr", "format.bit_depth": "32-bit float", "format.input_color_space": "sRGB"})
    data = (ctx.paths.output_dir / "hdr_00001.exr").read_bytes()
    assert b"prompt\x00string\x00" in data and b"chromaticities\x00chromaticities\x00" in data
    frame = next(av.open(io.BytesIO(data)).decode(video=0))
    rgb = frame.to_ndarray()                                       # PyAV returns the planes as R, G, B
    assert rgb.reshape(-1).tolist() == pytest.approx([0.0, ((0.5 + 0.055) / 1.055) ** 2.4, 1.0], abs=1e-6)


def test_string_nodes():
    assert st.concatenate(None, "a", "b", ", ") == ("a, b",)
    assert st.substring(None, "hello", 1, -1) == ("ell",)
    assert st.length(None, "héllo") == (5,)
    assert st.case_converter(None, "hello world", "Title Case") == ("Hello World",)
    assert st.trim(None, "  x  ", "Left") == ("x  ",)
    assert st.replace(None, "a-b-c", "-", "+") == ("a+b+c",)
    assert st.contains(None, "Hello", "hell", False) == (True,) and st.contains(None, "Hello", "hell", True) == (False,)
    assert st.compare(None, "Hello", "HE", "Starts With", False) == (True,)
    assert st.json_extract(None, '{"a": 1, "b": null}', "a") == ("1",)
    assert st.json_extract(None, '{"a": 1, "b": null}', "b") == ("",) and st.json_extract(None, "{", "a") == ("",)


def test_regex_nodes():
    assert st.regex_match(None, "Cat", "cat", True, False, False) == (True,)
    assert st.regex_match(None, "x", "(", True, False, False) == (False,)             # bad pattern: no match
    text = "a1b22c333"
    assert st.regex_extract(None, text, r"\d+", "First Match", True, False, False, 1) == ("1",)
    assert st.regex_extract(None, text, r"\d+", "All Matches", True, False, False, 1) == ("1\n22\n333",)
    assert st.regex_extract(None, text, r"([a-z])(\d+)", "All Groups", True, False, False, 2) == ("1\n22\n333",)
    assert st.regex_extract(None, text, r"([a-z])(\d+)", "First Group", True, False, False, 3) == ("",)
    assert st.regex_replace(None, "A a A", "a", "b", count=2) == ("b b A",)
    assert st.regex_replace(None, "A a A", "a", "b", case_insensitive=False) == ("A b A",)


def test_manual_sigmas_parses_numbers():
    (sigmas,) = st.manual_sigmas(None, "1, 0.5, .25,-0.0")
    assert sigmas.tolist() == [1.0, 0.5, 0.25, -0.0]


def test_ui_workflow_with_save_image_advanced_converts_its_format_widgets(tmp_path):
    from diffmesh.graph.validate import validate_prompt
    from diffmesh.graph.workflow import ui_to_api
    from diffmesh.nodes.registry import build_registry

    registry = build_registry()
    ui = {"nodes": [
        {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [8, 8, 1, 0],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
        {"id": 2, "type": "SaveImageAdvanced", "mode": 0, "widgets_values": ["front", "png", "16-bit", "sRGB"],
         "inputs": [{"name": "images", "type": "IMAGE", "link": 1}]}],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]]}
    prompt = ui_to_api(ui, registry, Paths.build(tmp_path))
    assert prompt["2"]["inputs"] == {"filename_prefix": "front", "format": "png", "format.bit_depth": "16-bit",
                                     "format.input_color_space": "sRGB", "images": ["1", 0]}
    ok, error, outputs, _ = validate_prompt(prompt, registry, Paths.build(tmp_path))
    assert ok and outputs == ["2"], error
    prompt["2"]["inputs"]["format.bit_depth"] = "32-bit float"          # an exr option under png
    ok, _, _, node_errors = validate_prompt(prompt, registry, Paths.build(tmp_path))
    assert not ok and node_errors["2"]["errors"][0]["type"] == "value_not_in_list"


def _resize(data, kind, method="nearest-exact", **options):
    from diffmesh.nodes.extras_resize import resize_image_mask

    dynamic = {"resize_type": kind, **{f"resize_type.{k}": v for k, v in options.items()}}
    return resize_image_mask(None, data, method, **dynamic)[0]


@pytest.mark.parametrize("kind, options, image_hw, mask_hw", [
    ("scale by multiplier", {"multiplier": 0.5}, (3, 5), (3, 5)),
    ("scale dimensions", {"width": 4, "height": 0, "crop": "disabled"}, (2, 4), (2, 4)),
    ("scale longer dimension", {"longer_size": 20}, (12, 20), (12, 20)),
    ("scale shorter dimension", {"shorter_size": 3}, (3, 5), (3, 5)),
    ("scale width", {"width": 5}, (3, 5), (3, 5)),
    ("scale height", {"height": 12}, (12, 20), (12, 20)),
    ("scale total pixels", {"megapixels": 60 / 1048576}, (6, 10), (6, 10)),
    ("scale to multiple", {"multiple": 4}, (4, 8), (4, 8)),
])
def test_resize_image_mask_sizes_images_and_masks_alike(kind, options, image_hw, mask_hw):
    image, mask = torch.rand(2, 6, 10, 3), torch.rand(2, 6, 10)
    assert _resize(image, kind, **options).shape == (2, *image_hw, 3)
    assert _resize(mask, kind, **options).shape == (2, *mask_hw)


def test_resize_match_size_and_nearest_values():
    image = torch.arange(16.0).reshape(1, 4, 4, 1)
    out = _resize(image, "match size", match=torch.zeros(1, 2, 2), crop="disabled")
    assert out[0, :, :, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]          # nearest-exact: pixel centres
    with pytest.raises(ValueError, match="unsupported resize_type 'nope'"):
        _resize(image, "nope")


def test_ui_workflow_with_compare_images_queues_the_compare_view_like_the_frontend(tmp_path):
    from diffmesh.graph.executor import PromptExecutor
    from diffmesh.graph.workflow import ui_to_api
    from diffmesh.nodes.registry import build_registry

    registry = build_registry()
    ui = {"nodes": [
        {"id": 1, "type": "EmptyImage", "mode": 0, "widgets_values": [4, 4, 1, 0],
         "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
        {"id": 2, "type": "ImageCompare", "mode": 0, "widgets_values": [],
         "inputs": [{"name": "image_a", "type": "IMAGE", "link": 1}, {"name": "image_b", "type": "IMAGE", "link": None}]}],
        "links": [[1, 1, 0, 2, 0, "IMAGE"]]}
    prompt = ui_to_api(ui, registry, Paths.build(tmp_path))
    assert prompt["2"]["inputs"]["compare_view"] == {"__value__": ["", ""]}
    result = PromptExecutor(registry, engine=None, paths=Paths.build(tmp_path)).execute(prompt, "c1")
    assert result.status == "success", result.validation_error
    ui_out = result.outputs["2"]
    assert ui_out["b_images"] == [] and ui_out["a_images"][0]["type"] == "temp"
    assert ui_out["a_images"][0]["filename"].startswith("comfy.compare.a")
