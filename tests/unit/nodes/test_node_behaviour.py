"""Behaviour of the nodes that need no model: latents, images, files."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffmesh.config.paths import Paths
from diffmesh.nodes import conditioning, image, io, latent
from diffmesh.nodes.base import NodeContext


@pytest.fixture
def ctx(tmp_path):
    paths = Paths.build(tmp_path)
    paths.ensure_dirs()
    return NodeContext(engine=None, paths=paths, node_id="1", prompt={}, extra_data={}, state={})


def test_empty_latent_is_zeros_of_an_eighth_size(ctx):
    (out,) = latent.empty_latent(ctx, 64, 48, 2)
    assert out["samples"].shape == (2, 4, 6, 8) and out["samples"].dtype == torch.float32
    assert not out["samples"].any()


def test_latent_upscale_derives_missing_side_and_keeps_other_keys(ctx):
    samples = {"samples": torch.randn(1, 4, 8, 16), "batch_index": [0]}
    (out,) = latent.latent_upscale(ctx, samples, "nearest-exact", 256, 0, "disabled")
    assert out["samples"].shape == (1, 4, 16, 32) and out["batch_index"] == [0]
    assert latent.latent_upscale(ctx, samples, "bilinear", 0, 0, "disabled")[0] is samples


@pytest.mark.parametrize("method", ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"])
def test_latent_upscale_by_every_method(ctx, method):
    (out,) = latent.latent_upscale_by(ctx, {"samples": torch.randn(1, 4, 8, 8)}, method, 1.5)
    assert out["samples"].shape == (1, 4, 12, 12) and torch.isfinite(out["samples"]).all()


def test_bislerp_keeps_a_constant_field_constant():
    field = torch.ones(1, 4, 5, 5) * torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 4, 1, 1)
    out = image.bislerp(field, 9, 7)
    assert torch.allclose(out, field[..., :1, :1].expand(1, 4, 7, 9), atol=1e-5)


def test_image_scale_center_crop_and_scale_by(ctx):
    img = torch.rand(1, 20, 40, 3)
    (out,) = image.image_scale(ctx, img, "bilinear", 10, 10, "center")
    assert out.shape == (1, 10, 10, 3)
    (out,) = image.image_scale(ctx, img, "lanczos", 0, 10, "disabled")
    assert out.shape == (1, 10, 20, 3)
    (out,) = image.image_scale_by(ctx, img, "area", 0.5)
    assert out.shape == (1, 10, 20, 3)


def test_set_latent_noise_mask_reshapes_the_mask(ctx):
    (out,) = latent.set_noise_mask(ctx, {"samples": torch.zeros(1, 4, 8, 8)}, torch.ones(16, 16))
    assert out["noise_mask"].shape == (1, 1, 16, 16)


def test_conditioning_combine_and_set_area(ctx):
    a, b = [[torch.zeros(1, 77, 8), {"pooled_output": None}]], [[torch.ones(1, 77, 8), {}]]
    (combined,) = conditioning.combine(ctx, a, b)
    assert len(combined) == 2 and combined[1][0] is b[0][0]
    (area,) = conditioning.set_area(ctx, a, 128, 64, 16, 8, 0.5)
    assert area[0][1] == {"pooled_output": None, "area": (8, 16, 1, 2), "strength": 0.5, "set_area_to_bounds": False}
    assert "area" not in a[0][1]


def test_clip_text_encode_without_clip_says_what_is_wrong(ctx):
    with pytest.raises(RuntimeError, match="clip input is invalid"):
        conditioning.encode(ctx, "hi", None)


def test_save_image_names_files_with_a_counter_and_writes_metadata(ctx):
    images = torch.full((2, 8, 8, 3), 0.5)
    prompt = {"1": {"class_type": "X", "inputs": {}}}
    result = io.save_image(ctx, images, "run/img", prompt=prompt, extra_pnginfo={"workflow": {"id": "w"}})
    assert result == {"ui": {"images": [{"filename": "img_00001_.png", "subfolder": "run", "type": "output"},
                                        {"filename": "img_00002_.png", "subfolder": "run", "type": "output"}]}}
    saved = Image.open(ctx.paths.output_dir / "run" / "img_00002_.png")
    assert json.loads(saved.text["prompt"]) == prompt and json.loads(saved.text["workflow"]) == {"id": "w"}
    assert np.asarray(saved)[0, 0, 0] == 127                 # 127.5 truncated, not rounded
    again = io.save_image(ctx, images[:1], "run/img")
    assert again["ui"]["images"][0]["filename"] == "img_00003_.png"


def test_save_image_refuses_to_leave_the_output_folder(ctx):
    with pytest.raises(ValueError, match="outside the output folder"):
        io.save_image(ctx, torch.zeros(1, 4, 4, 3), "../escape")


def test_disable_metadata_writes_no_text_chunks(ctx):
    ctx.options["disable_metadata"] = True
    io.save_image(ctx, torch.zeros(1, 4, 4, 3), "plain", prompt={"a": 1})
    assert "prompt" not in Image.open(ctx.paths.output_dir / "plain_00001_.png").text


def test_preview_image_goes_to_temp_with_a_fixed_random_prefix(ctx):
    first = io.preview_image(ctx, torch.zeros(1, 4, 4, 3))["ui"]["images"][0]
    second = io.preview_image(ctx, torch.zeros(1, 4, 4, 3))["ui"]["images"][0]
    assert first["type"] == "temp" and first["filename"].startswith("ComfyUI_temp_")
    assert first["filename"][:18] == second["filename"][:18]
    assert (ctx.paths.temp_dir / second["filename"]).is_file()


def test_load_image_returns_rgb_and_inverted_alpha_mask(ctx):
    rgba = np.zeros((6, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 255, 64
    Image.fromarray(rgba, "RGBA").save(ctx.paths.input_dir / "a.png")
    img, mask = io.load_image(ctx, "a.png")
    assert img.shape == (1, 6, 4, 3) and img[0, 0, 0, 0] == 1.0
    assert mask.shape == (1, 6, 4) and torch.allclose(mask, torch.full_like(mask, 1 - 64 / 255))
    Image.fromarray(rgba[..., :3]).save(ctx.paths.input_dir / "b.png")
    assert io.load_image(ctx, "b.png")[1].shape == (1, 64, 64)
    assert io.load_image_valid(ctx.paths, "b.png") is True
    assert io.load_image_changed(ctx.paths, "a.png") != io.load_image_changed(ctx.paths, "b.png")


def test_save_latent_then_load_latent_round_trips(ctx):
    samples = torch.randn(1, 4, 8, 8)
    ui = io.save_latent(ctx, {"samples": samples}, "latents/x", prompt={"p": 1})
    name = ui["ui"]["latents"][0]
    assert name == {"filename": "x_00001_.latent", "subfolder": "latents", "type": "output"}
    (loaded,) = io.load_latent(ctx, "latents/x_00001_.latent [output]")
    assert torch.equal(loaded["samples"], samples)


@pytest.mark.parametrize("name", ["../outside.png", "/etc/hostname", "sub/../../outside.png", "link.png"])
def test_load_image_and_latent_refuse_names_that_leave_their_folder(ctx, tmp_path, name):
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(outside)
    (ctx.paths.input_dir / "link.png").symlink_to(outside)
    for valid in (io.load_image_valid, io.load_latent_valid):
        message = valid(ctx.paths, name)
        assert isinstance(message, str) and message.startswith("Invalid ")
        assert any(why in message for why in ("outside its folder", "relative to its folder", "'..'"))
    with pytest.raises(ValueError, match="folder|relative|'..'"):
        io.load_image(ctx, name)
