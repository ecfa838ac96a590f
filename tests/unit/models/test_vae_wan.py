"""The Wan 2.1 VAE (Wan, Qwen-Image) on a tiny random file: 5-D latents, causality, frames, encode."""

import pytest
import torch

from diffmesh.models import testmodels_dit as td
from diffmesh.models import vae_wan


@pytest.fixture(scope="module")
def tiny_sd():
    return td.state_dict("wan21vae", "tiny")


@pytest.fixture(scope="module")
def vae(tiny_sd):
    return vae_wan.build_wan_vae(tiny_sd, "cpu", torch.float32)


def test_wan_vae_files_are_recognised_by_their_keys(tiny_sd):
    assert vae_wan.is_wan_vae(tiny_sd.keys())
    assert vae_wan.is_wan_vae(["first_stage_model." + k for k in tiny_sd])
    assert not vae_wan.is_wan_vae(["decoder.conv_in.weight", "encoder.conv_in.weight"])   # an LDM VAE


def test_config_reads_width_and_temporal_stages(tiny_sd):
    cfg = vae_wan.wan_vae_config({k: tuple(v.shape) for k, v in tiny_sd.items()})
    assert cfg["base_dim"] == 8 and cfg["z_dim"] == 16 and cfg["temperal_downsample"] == [False, True, True]
    full = vae_wan.wan_vae_config({k: v[0] for k, v in td.wan_vae_spec("reference").items.items()})
    assert full["base_dim"] == 96


def test_a_wan22_vae_gets_the_residual_48_channel_config():
    """Wan 2.2 was refused before it was supported; now its file gets the diffusers is_residual config
    with ComfyUI's widths (160, decoder 256) read from the shapes."""
    cfg = vae_wan.wan_vae_config({k: v[0] for k, v in td.wan22_vae_spec("reference").items.items()})
    assert (cfg["base_dim"], cfg["decoder_base_dim"], cfg["z_dim"]) == (160, 256, 48)
    assert cfg["is_residual"] and cfg["patch_size"] == 2 and cfg["temperal_downsample"] == [False, True, True]


def test_video_latent_decodes_to_frames_in_order(vae):
    z = torch.randn(1, 16, 2, 4, 4)
    frames = vae.decode(z)
    assert frames.shape == (5, 32, 32, 3)                    # 1 + 4 frames, flattened into the batch
    assert float(frames.min()) >= 0.0 and float(frames.max()) <= 1.0
    # causal: the first frame depends on the first latent frame only
    first = vae.decode(z[:, :, :1])
    torch.testing.assert_close(first, frames[:1], rtol=0, atol=1e-5)


def test_qwen_image_latent_decodes_to_one_image_per_sample(vae):
    z = torch.randn(2, 16, 1, 4, 6)
    images = vae.decode(z)
    assert images.shape == (2, 32, 48, 3)
    torch.testing.assert_close(vae.decode(z[:, :, 0]), images)            # a 4-D latent is one frame


def test_tiled_decode_with_one_tile_equals_decode(vae):
    z = torch.randn(1, 16, 2, 4, 4)
    torch.testing.assert_close(vae.decode_tiled(z, tile_size=64, overlap=8), vae.decode(z))


def test_tiled_decode_of_a_large_latent_keeps_shape_and_range(vae):
    z = torch.randn(1, 16, 1, 8, 6)
    out = vae.decode_tiled(z, tile_size=32, overlap=8)
    assert out.shape == (1, 64, 48, 3) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_images_encode_as_the_frames_of_one_video(vae):
    images = torch.rand(5, 34, 36, 3)                       # cropped to multiples of 8
    assert vae.encode(images).shape == (1, 16, 2, 4, 4)
    assert vae.encode(images[:1]).shape == (1, 16, 1, 4, 4)
