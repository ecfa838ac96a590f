"""Blend, Blur, Sharpen and Quantize Image on tiny images, ComfyUI's formulas written out."""

from __future__ import annotations

import math

import pytest
import torch

from diffmesh.nodes import extras_filters as fl


@pytest.mark.parametrize("mode, expected", [
    ("normal", 0.8), ("multiply", 0.2 * 0.8), ("screen", 1 - 0.8 * 0.2), ("overlay", 2 * 0.2 * 0.8),
    ("soft_light", 0.2 + (2 * 0.8 - 1) * (((16 * 0.2 - 12) * 0.2 + 4) * 0.2 - 0.2)), ("difference", 0.0),
])
def test_blend_modes_at_full_factor(mode, expected):
    a, b = torch.full((1, 2, 2, 3), 0.2), torch.full((1, 2, 2, 3), 0.8)
    (out,) = fl.image_blend(None, a, b, 1.0, mode)
    assert out[0, 0, 0, 0].item() == pytest.approx(expected)            # difference -0.6 clamps to 0


def test_blend_mixes_by_factor_and_resizes_the_second():
    (out,) = fl.image_blend(None, torch.zeros(1, 4, 4, 3), torch.ones(1, 2, 2, 3), 0.25, "normal")
    assert out.shape == (1, 4, 4, 3) and torch.allclose(out, torch.full_like(out, 0.25))
    with pytest.raises(ValueError, match="Unsupported blend mode: nope"):
        fl.blend_modes(torch.zeros(1), torch.zeros(1), "nope")


def test_blur_spreads_a_dot_by_comfyuis_kernel_and_keeps_flat_images():
    dot = torch.zeros(1, 5, 5, 1)
    dot[0, 2, 2, 0] = 1.0
    (out,) = fl.image_blur(None, dot, 1, 1.0)
    weights = [math.exp(-(x * x + y * y) / 2) for x in (-1, 0, 1) for y in (-1, 0, 1)]
    assert out[0, 2, 2, 0].item() == pytest.approx(1 / sum(weights))
    assert out[0, 1, 2, 0].item() == pytest.approx(math.exp(-0.5) / sum(weights))
    flat = torch.full((1, 4, 4, 3), 0.3)
    assert torch.allclose(fl.image_blur(None, flat, 2, 2.0)[0], flat)


def test_sharpen_keeps_flat_images_and_raises_edges():
    flat = torch.full((1, 4, 4, 3), 0.4)
    assert torch.allclose(fl.image_sharpen(None, flat, 1, 1.0, 1.0)[0], flat, atol=1e-6)
    step = torch.cat([torch.full((1, 4, 2, 1), 0.4), torch.full((1, 4, 2, 1), 0.6)], dim=2)
    (out,) = fl.image_sharpen(None, step, 1, 1.0, 0.5)
    assert out[0, 0, 1, 0] < 0.4 and out[0, 0, 2, 0] > 0.6


@pytest.mark.parametrize("dither", fl.DITHERS)
def test_quantize_limits_the_colours(dither):
    image = torch.linspace(0, 1, 8 * 8 * 3).reshape(1, 8, 8, 3)
    (out,) = fl.image_quantize(None, image, 2, dither)
    assert out.shape == image.shape and len(torch.unique(out.reshape(-1, 3), dim=0)) <= 2
