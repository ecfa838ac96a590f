"""comfy_extras mask, latent-arithmetic and rebatch nodes on tiny tensors, ComfyUI's results written
out (or computed the way ComfyUI's loops compute them)."""

from __future__ import annotations

import pytest
import torch

from diffmesh.config.paths import Paths
from diffmesh.graph.executor import PromptExecutor
from diffmesh.nodes import extras_latent as lt
from diffmesh.nodes import extras_mask as mk
from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.registry import build_registry


@pytest.fixture
def ctx(tmp_path):
    paths = Paths.build(tmp_path)
    return NodeContext(engine=None, paths=paths, node_id="1", prompt={}, extra_data={}, state={})


def test_latent_composite_masked_pastes_at_eighths_and_blends_by_mask(ctx):
    dest = {"samples": torch.zeros(1, 1, 4, 4), "batch_index": [3]}
    src = {"samples": torch.ones(1, 1, 2, 2)}
    (out,) = mk.latent_composite_masked(ctx, dest, src, 16, 8, False)
    expected = torch.zeros(4, 4)
    expected[1:3, 2:4] = 1
    assert torch.equal(out["samples"][0, 0], expected) and out["batch_index"] == [3]
    assert dest["samples"].sum() == 0                                   # the input is not changed
    (half,) = mk.latent_composite_masked(ctx, dest, src, 0, 0, False, torch.full((1, 2, 2), 0.5))
    assert half["samples"][0, 0, :2, :2].tolist() == [[0.5, 0.5], [0.5, 0.5]]
    (cut,) = mk.latent_composite_masked(ctx, dest, src, 24, 24, False)       # only the visible corner
    assert cut["samples"].sum() == 1 and cut["samples"][0, 0, 3, 3] == 1


def test_image_composite_masked_adds_opaque_alpha_to_an_rgb_source(ctx):
    dest = torch.zeros(1, 3, 3, 4)
    (out,) = mk.image_composite_masked(ctx, dest, torch.full((1, 2, 2, 3), 0.25), 1, 1, False)
    assert out[0, 1:, 1:].tolist() == [[[0.25, 0.25, 0.25, 1.0]] * 2] * 2 and out[0, 0].sum() == 0


def test_mask_image_conversions(ctx):
    mask = torch.rand(2, 3, 4)
    (image,) = mk.mask_to_image(ctx, mask)
    assert image.shape == (2, 3, 4, 3) and torch.equal(image[..., 1], mask)
    (back,) = mk.image_to_mask(ctx, torch.cat([image, 1 - image[..., :1]], dim=-1), "alpha")
    assert torch.allclose(back, 1 - mask)
    pixels = torch.tensor([[[[1.0, 0.0, 0.0], [0.0, 128 / 255, 1.0]]]])
    (keyed,) = mk.image_color_to_mask(ctx, pixels, 0x0080FF)
    assert keyed.tolist() == [[[0.0, 1.0]]]


def test_solid_invert_crop_threshold(ctx):
    (solid,) = mk.solid_mask(ctx, 0.25, 3, 2)
    assert solid.shape == (1, 2, 3) and torch.all(solid == 0.25)
    assert torch.all(mk.invert_mask(ctx, solid)[0] == 0.75)
    grid = torch.arange(16.0).reshape(1, 4, 4)
    assert mk.crop_mask(ctx, grid, 1, 2, 2, 5)[0].tolist() == [[[9.0, 10.0], [13.0, 14.0]]]
    assert mk.threshold_mask(ctx, grid / 15, 0.5)[0].sum() == 8


@pytest.mark.parametrize("operation, row", [
    ("multiply", [1.0, 0.5, 0.5]), ("add", [1.0, 1.0, 1.0]), ("subtract", [1.0, 0.5, 0.5]),
    ("and", [1.0, 0.0, 0.0]), ("or", [1.0, 1.0, 1.0]), ("xor", [1.0, 1.0, 1.0]),     # round(0.5) is 0
])
def test_mask_composite_operations_clip_to_the_destination(ctx, operation, row):
    dest = torch.ones(1, 2, 3)
    source = torch.full((1, 1, 3), 0.5)                                  # pasted at (1, 1): 2 pixels visible
    (out,) = mk.mask_composite(ctx, dest, source, 1, 1, operation)
    assert out[0].tolist() == [[1.0, 1.0, 1.0], row]


def test_feather_mask_ramps_each_side(ctx):
    (out,) = mk.feather_mask(ctx, torch.ones(1, 1, 5), 2, 0, 1, 0)
    assert out[0, 0].tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]
    (out,) = mk.feather_mask(ctx, torch.ones(1, 1, 5), 0, 0, 3, 0)
    assert out[0, 0].tolist() == pytest.approx([1.0, 1.0, 1.0, 2 / 3, 1 / 3])


def test_grow_mask_dilates_with_a_cross_or_square_and_erodes(ctx):
    dot = torch.zeros(1, 5, 5)
    dot[0, 2, 2] = 1
    (cross,) = mk.grow_mask(ctx, dot, 1, True)
    assert cross.sum() == 5 and cross[0, 1, 1] == 0
    (square,) = mk.grow_mask(ctx, dot, 1, False)
    assert square.sum() == 9
    (bigger,) = mk.grow_mask(ctx, dot, 2, True)
    assert bigger.sum() == 13                                          # a diamond of radius 2
    (shrunk,) = mk.grow_mask(ctx, square, -1, False)
    assert torch.equal(shrunk, dot)
    edge = torch.ones(1, 3, 3)
    assert torch.equal(mk.grow_mask(ctx, edge, -1, True)[0], edge)    # the border does not erode


def test_mask_preview_saves_a_grey_preview_and_passes_the_mask(tmp_path):
    executor = PromptExecutor(build_registry(), engine=None, paths=Paths.build(tmp_path))
    prompt = {"1": {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": 4, "height": 2}},
              "2": {"class_type": "MaskPreview", "inputs": {"mask": ["1", 0]}}}
    result = executor.execute(prompt, "m1")
    assert result.status == "success", result.error
    images = result.outputs["2"]["images"]
    assert images[0]["type"] == "temp" and images[0]["filename"].startswith("ComfyUI_temp_")
    assert result.outputs["2"]["animated"] == [False]


def test_latent_arithmetic_resizes_and_repeats_the_second(ctx):
    a = {"samples": torch.ones(2, 4, 2, 2), "noise_mask": "kept"}
    b = {"samples": torch.full((1, 4, 2, 2), 2.0)}
    assert torch.all(lt.latent_add(ctx, a, b)[0]["samples"] == 3) and lt.latent_add(ctx, a, b)[0]["noise_mask"] == "kept"
    assert torch.all(lt.latent_subtract(ctx, a, b)[0]["samples"] == -1)
    assert torch.all(lt.latent_multiply(ctx, b, -1.5)[0]["samples"] == -3)
    (same,) = lt.latent_interpolate(ctx, a, {"samples": torch.full((2, 4, 2, 2), 3.0)}, 0.25)
    assert torch.allclose(same["samples"], torch.full((2, 4, 2, 2), 0.25 * 1 + 0.75 * 3))   # same direction
    x, y = torch.tensor([[[[1.0]], [[0.0]]]]), torch.tensor([[[[0.0]], [[2.0]]]])        # orthogonal, batch 1
    (mixed,) = lt.latent_interpolate(ctx, {"samples": x}, {"samples": y}, 0.5)
    assert mixed["samples"].flatten().tolist() == pytest.approx([1.5 / 2 ** 0.5, 1.5 / 2 ** 0.5])


def test_latent_concat_cut_and_cut_to_batch(ctx):
    a = {"samples": torch.zeros(1, 1, 2, 2)}
    b = {"samples": torch.ones(1, 1, 2, 3)}
    (joined,) = lt.latent_concat(ctx, a, b, "-x")
    assert joined["samples"].shape == (1, 1, 2, 5) and joined["samples"][0, 0, 0].tolist() == [1, 1, 1, 0, 0]
    line = {"samples": torch.arange(6.0).reshape(1, 1, 1, 6)}
    assert lt.latent_cut(ctx, line, "x", 4, 5)[0]["samples"].flatten().tolist() == [4.0, 5.0]
    assert lt.latent_cut(ctx, line, "x", -2, 5)[0]["samples"].flatten().tolist() == [4.0, 5.0]
    video = {"samples": torch.arange(5.0).reshape(1, 1, 5, 1, 1)}
    (cut,) = lt.latent_cut_to_batch(ctx, video, "t", 2)
    assert cut["samples"].shape == (2, 1, 2, 1, 1) and cut["samples"].flatten().tolist() == [0, 1, 2, 3]


def test_latent_batch_and_seed_behavior(ctx):
    a = {"samples": torch.zeros(2, 4, 2, 2), "batch_index": [5, 6]}
    (both,) = lt.latent_batch(ctx, a, {"samples": torch.ones(1, 4, 4, 4)})
    assert both["samples"].shape == (3, 4, 2, 2) and both["batch_index"] == [5, 6, 0]
    assert lt.latent_batch_seed_behavior(ctx, both, "fixed")[0]["batch_index"] == [5, 5, 5]
    assert "batch_index" not in lt.latent_batch_seed_behavior(ctx, both, "random")[0] and "batch_index" in both


def test_rebatch_latents_joins_and_cuts_by_size_and_keeps_indices(ctx):
    small = [{"samples": torch.full((3, 4, 2, 2), float(i))} for i in range(2)]
    big = {"samples": torch.zeros(1, 4, 3, 3)}
    (out,) = lt.rebatch_latents(ctx, small + [big], [4])
    assert [o["samples"].shape[0] for o in out] == [4, 2, 1]
    assert out[0]["batch_index"] == [0, 1, 2, 3] and out[1]["batch_index"] == [4, 5]
    assert out[2]["samples"].shape[-1] == 3 and "noise_mask" not in out[0]
    masked = {"samples": torch.zeros(2, 4, 1, 1), "noise_mask": torch.zeros(1, 1, 8, 8)}
    (kept,) = lt.rebatch_latents(ctx, [masked], [1])
    assert [k["noise_mask"].shape for k in kept] == [(1, 1, 8, 8)] * 2


def test_rebatch_images_splits_every_frame_into_batches(ctx):
    (out,) = lt.rebatch_images(ctx, [torch.zeros(3, 2, 2, 3), torch.ones(2, 2, 2, 3)], [2])
    assert [o.shape[0] for o in out] == [2, 2, 1] and out[1][1].mean() == 1


def test_batch_masks_and_latents_join_grown_inputs_in_index_order(ctx):
    masks = {f"masks.mask{i}": torch.full((1, 2, 2), float(i)) for i in (10, 2, 0)}
    masks["masks.mask2"] = torch.full((1, 4, 4), 2.0)                 # resized to the first (mask0) size
    (out,) = lt.batch_masks_node(ctx, **masks)
    assert out.shape == (3, 2, 2) and out[:, 0, 0].tolist() == [0.0, 2.0, 10.0]
    (latent,) = lt.batch_latents_node(ctx, **{"latents.latent1": {"samples": torch.ones(2, 4, 2, 2), "batch_index": [7, 8]},
                                             "latents.latent0": {"samples": torch.zeros(1, 4, 2, 2)}})
    assert latent["samples"][:, 0, 0, 0].tolist() == [0.0, 1.0, 1.0] and latent["batch_index"] == [0, 7, 8]
