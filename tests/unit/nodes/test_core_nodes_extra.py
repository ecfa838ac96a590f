"""The image, latent and conditioning nodes of ComfyUI's nodes.py added with issue 11: ComfyUI's
maths on small hand-made tensors (expected values written out or computed by ComfyUI's loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffmesh.config.paths import Paths
from diffmesh.nodes import conditioning_extra as cond
from diffmesh.nodes import image_extra as img
from diffmesh.nodes import latent_batch as lat
from diffmesh.nodes.base import NodeContext


@pytest.fixture
def ctx(tmp_path):
    paths = Paths.build(tmp_path)
    paths.input_dir.mkdir(parents=True, exist_ok=True)
    paths.output_dir.mkdir(parents=True, exist_ok=True)
    return NodeContext(engine=None, paths=paths, node_id="1", prompt={}, extra_data={}, state={})


def _latent(batch=4, h=16, w=16):
    return {"samples": torch.arange(batch * 4 * h * w, dtype=torch.float32).reshape(batch, 4, h, w)}


# -- latents ---------------------------------------------------------------------------------------

def test_latent_from_batch_slices_samples_masks_and_records_batch_index(ctx):
    source = {**_latent(4), "noise_mask": torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 1, 8, 8)}
    (got,) = lat.latent_from_batch(ctx, source, batch_index=2, length=5)
    assert torch.equal(got["samples"], source["samples"][2:4]) and got["batch_index"] == [2, 3]
    assert got["noise_mask"][:, 0, 0, 0].tolist() == [0.0, 1.0]          # mask batch of 2 repeated to 4, rows 2..3
    (again,) = lat.latent_from_batch(ctx, got, batch_index=1, length=1)
    assert again["batch_index"] == [3] and "batch_index" not in source             # the input is not changed


def test_repeat_latent_batch_repeats_and_offsets_batch_indices(ctx):
    source = {**_latent(2), "batch_index": [3, 4]}
    (got,) = lat.repeat_latent_batch(ctx, source, amount=3)
    assert got["samples"].shape[0] == 6 and torch.equal(got["samples"][4:], source["samples"])
    assert got["batch_index"] == [3, 4, 5, 6, 7, 8]


def test_latent_composite_pastes_and_feathers_inner_edges(ctx):
    to = {"samples": torch.zeros(1, 1, 8, 8)}
    src = {"samples": torch.ones(1, 1, 8, 8)}
    (hard,) = lat.latent_composite(ctx, to, src, x=16, y=32, feather=0)
    assert hard["samples"][0, 0, 4:, 2:].eq(1).all() and hard["samples"][0, 0, :4].eq(0).all()
    (soft,) = lat.latent_composite(ctx, to, src, x=16, y=16, feather=16)
    row = soft["samples"][0, 0, 4, 2:].tolist()
    assert row == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]                    # left edge ramps 1/2, the border edge stays hard
    assert soft["samples"][0, 0, 2, 2].item() == 0.25               # corner: both ramps


def test_latent_blend_mixes_and_resizes_the_second(ctx):
    a, b = {"samples": torch.full((1, 4, 8, 8), 2.0)}, {"samples": torch.full((1, 4, 4, 4), 6.0)}
    (got,) = lat.latent_blend(ctx, a, b, blend_factor=0.25)
    assert got["samples"].shape == (1, 4, 8, 8) and torch.allclose(got["samples"], torch.full((1, 4, 8, 8), 5.0))


def test_latent_rotate_flip_crop(ctx):
    grid = {"samples": torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]).reshape(1, 1, 2, 3)}
    (r90,) = lat.latent_rotate(ctx, grid, "90 degrees")
    assert r90["samples"][0, 0].tolist() == [[4.0, 1.0], [5.0, 2.0], [6.0, 3.0]]    # clockwise
    (none,) = lat.latent_rotate(ctx, grid, "none")
    assert torch.equal(none["samples"], grid["samples"])
    (fx,) = lat.latent_flip(ctx, grid, "x-axis: vertically")
    (fy,) = lat.latent_flip(ctx, grid, "y-axis: horizontally")
    assert fx["samples"][0, 0].tolist() == [[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]]
    assert fy["samples"][0, 0].tolist() == [[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]
    big = _latent(1, 16, 16)
    (crop,) = lat.latent_crop(ctx, big, width=64, height=128, x=200, y=8)
    assert torch.equal(crop["samples"], big["samples"][:, :, 1:17, 8:16])          # x clamped to 16 - 8


# -- images ----------------------------------------------------------------------------------------

def test_image_invert_batch_and_empty_image(ctx):
    image = torch.rand(1, 8, 8, 3)
    assert torch.equal(img.invert(ctx, image)[0], 1.0 - image)
    (both,) = img.batch(ctx, image, torch.rand(2, 4, 4, 3))
    assert both.shape == (3, 8, 8, 3) and torch.equal(both[0], image[0])
    (orange,) = img.empty_image(ctx, width=3, height=2, batch_size=2, color=0xFF8000)
    assert orange.shape == (2, 2, 3, 3) and orange[0, 0, 0].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


def _outpaint_reference(h, w, top, bottom, left, right, feathering):
    """ComfyUI's ImagePadForOutpaint loop, written out."""
    t = torch.zeros((h, w))
    for i in range(h):
        for j in range(w):
            d = min(i if top != 0 else h, h - i if bottom != 0 else h, j if left != 0 else w, w - j if right != 0 else w)
            if d < feathering:
                t[i, j] = ((feathering - d) / feathering) ** 2
    return t


def test_pad_for_outpaint_pads_grey_and_feathers_the_mask(ctx):
    image = torch.rand(1, 20, 24, 3)
    padded, mask = img.pad_for_outpaint(ctx, image, left=8, top=0, right=0, bottom=16, feathering=5)
    assert padded.shape == (1, 36, 32, 3) and mask.shape == (1, 36, 32)
    assert torch.equal(padded[:, 0:20, 8:32], image) and padded[0, 30, 0].tolist() == [0.5, 0.5, 0.5]
    assert torch.allclose(mask[0, 0:20, 8:32], _outpaint_reference(20, 24, 0, 16, 8, 0, 5))
    assert mask[0, 25].eq(1).all() and mask[0, :, :8].eq(1).all()


def test_load_image_mask_channels_and_load_image_output(ctx):
    rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 64
    Image.fromarray(rgba, "RGBA").save(ctx.paths.input_dir / "m.png")
    (alpha,) = img.load_image_mask(ctx, "m.png", "alpha")
    (red,) = img.load_image_mask(ctx, "m.png", "red")
    assert alpha.shape == (1, 4, 5) and alpha[0, 0, 0].item() == pytest.approx(1 - 64 / 255) and red.eq(1).all()
    Image.fromarray(rgba[..., :3], "RGB").save(ctx.paths.output_dir / "o.png")
    image, mask = img.NODES[1].execute(ctx, image="o.png [output]")
    assert image.shape == (1, 4, 5, 3) and image[0, 0, 0, 0].item() == 1.0 and mask.shape == (1, 64, 64)
    assert img.NODES[1].validate_inputs(ctx.paths, image="o.png [output]") is True


# -- conditioning ----------------------------------------------------------------------------------

def test_conditioning_average_mixes_tokens_and_pooled_and_pads_short_sources(ctx):
    to = [[torch.full((1, 4, 2), 2.0), {"pooled_output": torch.full((1, 3), 2.0), "x": 1}]]
    source = [[torch.full((1, 2, 2), 6.0), {"pooled_output": torch.full((1, 3), 6.0)}]]
    (got,) = cond.average(ctx, to, source, conditioning_to_strength=0.75)
    tokens, options = got[0]
    assert tokens[0, :, 0].tolist() == [3.0, 3.0, 1.5, 1.5]            # missing source tokens count as zeros
    assert options["pooled_output"].eq(3.0).all() and options["x"] == 1 and "x" in to[0][1]
    assert to[0][1]["pooled_output"].eq(2.0).all()                   # input untouched


def test_conditioning_concat_and_option_setters(ctx):
    base = [[torch.zeros(1, 3, 2), {"keep": True}]]
    (cat,) = cond.concat(ctx, base, [[torch.ones(1, 2, 2), {}]])
    assert cat[0][0].shape == (1, 5, 2) and cat[0][1] == {"keep": True}
    (area,) = cond.set_area_percentage(ctx, base, width=0.5, height=0.25, x=0.1, y=0.2, strength=2.0)
    assert area[0][1]["area"] == ("percentage", 0.25, 0.5, 0.2, 0.1) and area[0][1]["strength"] == 2.0
    assert area[0][1]["set_area_to_bounds"] is False
    assert cond.set_area_strength(ctx, base, 0.3)[0][0][1]["strength"] == 0.3
    (masked,) = cond.set_mask(ctx, base, torch.ones(8, 8), strength=0.5, set_cond_area="mask bounds")
    assert masked[0][1]["mask"].shape == (1, 8, 8) and masked[0][1]["set_area_to_bounds"] is True
    assert masked[0][1]["mask_strength"] == 0.5 and "mask" not in base[0][1]
    (ranged,) = cond.set_timestep_range(ctx, base, start=0.2, end=0.7)
    assert (ranged[0][1]["start_percent"], ranged[0][1]["end_percent"]) == (0.2, 0.7)
