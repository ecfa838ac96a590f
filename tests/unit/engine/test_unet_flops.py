"""The cost model's UNet FLOPs (`costmodel.unet_flops`): each weight counted at its block's resolution
level, found from the downsamplers and upsamplers in ComfyUI's key layout."""

from __future__ import annotations

import pytest

from diffmesh.engine.costmodel import model_facts_from_shapes, unet_flops

T = 1024          # latent positions at the top level


def _one(key: str, shape: tuple, extra: dict | None = None) -> float:
    """FLOPs the UNet of `extra` + one weight `key` counts for that weight."""
    base = {"input_blocks.3.0.op.weight": (1, 1, 1, 1), "input_blocks.6.0.op.weight": (1, 1, 1, 1),
            "output_blocks.2.1.conv.weight": (1, 1, 1, 1), "output_blocks.5.2.conv.weight": (1, 1, 1, 1)}
    base.update(extra or {})
    return unet_flops({**base, key: shape}, T) - unet_flops(base, T)


@pytest.mark.parametrize("key,level", [
    ("input_blocks.0.0.weight", 0), ("input_blocks.2.0.in_layers.2.weight", 0),
    ("input_blocks.4.0.in_layers.2.weight", 1), ("input_blocks.7.1.proj_in.weight", 2),
    ("middle_block.1.proj_in.weight", 2), ("output_blocks.0.0.in_layers.2.weight", 2),
    ("output_blocks.3.0.in_layers.2.weight", 1), ("output_blocks.6.0.in_layers.2.weight", 0),
    ("out.2.weight", 0),
])
def test_each_weight_runs_at_its_blocks_level(key, level):
    assert _one(key, (8, 8, 3, 3)) == pytest.approx(2 * 8 * 8 * 9 * T / 4 ** level)


def test_embeddings_run_once_per_row_and_attention_adds_its_products():
    assert _one("time_embed.0.weight", (64, 16)) == pytest.approx(2 * 64 * 16)
    width = 32
    got = _one("input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", (width, width))
    at = T / 4
    assert got == pytest.approx(2 * width * width * at + 4 * at * at * width)


def test_unet_facts_count_rows_and_stay_below_the_transformer_estimate():
    shapes = {"input_blocks.0.0.weight": (8, 4, 3, 3), "input_blocks.3.0.op.weight": (8, 8, 3, 3),
              "middle_block.0.in_layers.2.weight": (64, 64, 3, 3), "output_blocks.2.1.conv.weight": (8, 8, 3, 3),
              "output_blocks.3.0.in_layers.2.weight": (8, 8, 3, 3)}
    one = model_facts_from_shapes(shapes, 4, "unet", T, 8, 1)
    two = model_facts_from_shapes(shapes, 4, "unet", T, 8, 2)
    assert two.flops == pytest.approx(2 * one.flops)
    params = sum(a * b * c * d for a, b, c, d in shapes.values())
    assert one.flops < 2 * params * T          # the deep middle block's weights run at 1/4 of the positions
