"""Stitch Images, Resize And Pad Image, Join Image with Alpha and Format Text on tiny inputs, with
ComfyUI's results written out."""

from __future__ import annotations

import pytest
import torch

from diffmesh.config.paths import Paths
from diffmesh.graph.executor import PromptExecutor
from diffmesh.nodes import extras_compose as cp
from diffmesh.nodes.extras_string import string_format
from diffmesh.nodes.registry import build_registry


def test_stitch_without_a_second_image_returns_the_first():
    image = torch.rand(1, 2, 2, 3)
    assert cp.image_stitch(None, image, "right", True, 0, "white")[0] is image


def test_stitch_left_with_spacing_pads_batch_and_places_image2_first():
    a, b = torch.zeros(2, 2, 2, 3), torch.ones(1, 2, 3, 3)
    (out,) = cp.image_stitch(None, a, "left", False, 1, "red", b)     # spacing 1 -> 2 (even)
    assert out.shape == (2, 2, 3 + 2 + 2, 3)
    assert torch.all(out[:, :, :3] == 1) and torch.all(out[:, :, 5:] == 0)
    assert out[0, 0, 3].tolist() == [1.0, 0.0, 0.0]                  # the red spacer


def test_stitch_down_without_matching_centres_the_narrower_image_and_adds_alpha():
    a, b = torch.zeros(1, 1, 4, 3), torch.full((1, 1, 2, 4), 0.5)
    (out,) = cp.image_stitch(None, a, "down", False, 0, "black", b)
    assert out.shape == (1, 2, 4, 4)
    assert out[0, 1, :, 0].tolist() == [0.0, 0.5, 0.5, 0.0] and torch.all(out[0, 0, :, 3] == 1.0)


def test_stitch_matching_size_scales_image2_to_image1s_height():
    (out,) = cp.image_stitch(None, torch.zeros(1, 4, 4, 3), "right", True, 0, "white", torch.ones(1, 2, 3, 3))
    assert out.shape == (1, 4, 4 + 6, 3)


def test_resize_and_pad_fits_and_centres():
    (out,) = cp.resize_and_pad(None, torch.zeros(1, 2, 4, 3), 8, 8, "white", "nearest-exact")
    assert out.shape == (1, 8, 8, 3)
    assert torch.all(out[:, 2:6] == 0) and torch.all(out[:, :2] == 1) and torch.all(out[:, 6:] == 1)


def test_join_image_with_alpha_inverts_and_resizes_the_mask():
    (out,) = cp.join_image_with_alpha(None, torch.rand(2, 4, 4, 3), torch.ones(1, 2, 2))
    assert out.shape == (2, 4, 4, 4) and torch.all(out[..., 3] == 0)


def test_format_text_uses_pythons_format_with_connected_values(tmp_path):
    assert string_format(None, "{a}-{b:.2f}", **{"values.a": "x", "values.b": 1.5}) == ("x-1.50",)
    assert string_format(None, "plain") == ("plain",)
    executor = PromptExecutor(build_registry(), engine=None, paths=Paths.build(tmp_path))
    prompt = {"1": {"class_type": "PrimitiveInt", "inputs": {"value": 7}},
              "2": {"class_type": "StringFormat", "inputs": {"f_string": "n={a}", "values.a": ["1", 0]}},
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
    result = executor.execute(prompt, "f1")
    assert result.outputs["3"] == {"text": ["n=7"]}
    with pytest.raises(KeyError):
        string_format(None, "{z}")
