"""Wan 2.2: the TI2V 5B transformer (48-channel latent, per-frame timesteps), the Wan 2.2 VAE, the Wan22
latent format, and the causal chunked decode/encode of both Wan VAEs.

Parity numbers come from ComfyUI's own modules on the same tiny random weights
(tests/data/wan22/record_comfyui.py, ComfyUI 0.3.64, CPU fp32)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

REFERENCE = Path(__file__).resolve().parents[2] / "data" / "wan22" / "comfyui_wan22.safetensors"


@pytest.fixture(scope="module")
def comfy():
    return load_file(str(REFERENCE))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _shapes(sd: dict) -> dict:
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.fixture(scope="module")
def ti2v():
    from diffmesh.models import testmodels_dit
    from diffmesh.models.dit import wan, wan22

    sd = testmodels_dit.state_dict("wan21", "tiny-ti2v")
    net = wan.WanTransformer(wan22.FAMILY.config(_shapes(sd)))
    net.load_state_dict(sd)
    return net.eval()


# ---------------------------------------------------------------- detection

def test_a_48_channel_wan_file_is_wan22_and_the_16_channel_ones_stay_wan21():
    from diffmesh.models import detect, testmodels_dit

    assert detect.dit_family(_shapes(testmodels_dit.state_dict("wan21", "tiny-ti2v"))) == ("wan22", "")
    assert detect.dit_family(_shapes(testmodels_dit.state_dict("wan21", "tiny"))) == ("wan21", "")
    # the Wan 2.2 14B experts (T2V and I2V) have the Wan 2.1 layout and 16-channel latents: family wan21
    assert detect.dit_family(_shapes(testmodels_dit.state_dict("wan21", "tiny-i2v"))) == ("wan21", "")


def test_the_5b_config_is_read_from_the_shapes_as_comfyui_does():
    from diffmesh.models import testmodels_dit
    from diffmesh.models.dit import family

    spec = testmodels_dit._spec("wan21", "5b")               # shapes only: nothing is allocated
    cfg = family("wan22").config({k: v[0] for k, v in spec.items.items()})
    assert cfg == {"dim": 3072, "num_heads": 24, "out_dim": 48, "ffn_dim": 14336, "num_layers": 30, "in_dim": 48,
                   "text_dim": 4096, "model_type": "t2v", "frame_timesteps": True}
    assert family("wan22").latent_format == "wan22"
    assert family("wan22").default_sampling(cfg) == ("shift", 8.0, 1000.0)


def test_the_wan22_latent_format_is_comfyuis(comfy):
    from diffmesh.sampling.latent_formats import for_family

    fmt = for_family("wan22")
    assert (fmt.channels, fmt.dimensions, fmt.scale_factor) == (48, 3, 1.0)
    assert torch.equal(torch.tensor(fmt.latents_mean), comfy["wan22_mean"])
    assert torch.equal(torch.tensor(fmt.latents_std), comfy["wan22_std"])
    assert torch.equal(torch.tensor(fmt.latent_rgb_factors), comfy["wan22_rgb"])


# ---------------------------------------------------------------- transformer parity

def test_per_frame_timesteps_match_comfyui(comfy, ti2v):
    """The inpaint mask (first latent frame 0) gives frame 0 timestep 0: ComfyUI's WanModel on the
    per-frame timesteps of WAN22.process_timestep, and the plain (B,) timestep, both within 1e-6."""
    from diffmesh.models.dit.wan import frame_timesteps

    t = frame_timesteps(comfy["ti2v_t"], comfy["ti2v_mask"])
    assert torch.equal(t, comfy["ti2v_frame_t"])
    assert t[:, 0].tolist() == [0.0, 0.0] and t[:, 1:].eq(comfy["ti2v_t"][:, None]).all()
    with torch.no_grad():
        masked = ti2v(comfy["ti2v_x"], comfy["ti2v_t"], comfy["ti2v_ctx"], denoise_mask=comfy["ti2v_mask"])
        plain = ti2v(comfy["ti2v_x"], comfy["ti2v_t"], comfy["ti2v_ctx"])
    assert _rel(masked, comfy["ti2v_out"]) < 1e-6
    assert _rel(plain, comfy["ti2v_out_plain"]) < 1e-6
    assert _rel(masked, plain) > 1e-2                         # the mask really changes the model's input


def test_an_all_ones_mask_is_the_plain_timestep(ti2v, comfy):
    x, t, ctx = comfy["ti2v_x"], comfy["ti2v_t"], comfy["ti2v_ctx"]
    with torch.no_grad():
        per_frame = ti2v(x, t, ctx, denoise_mask=torch.ones_like(x))
        plain = ti2v(x, t, ctx)
    assert _rel(per_frame, plain) < 1e-6


def test_a_wan21_model_ignores_the_mask():
    """Only Wan 2.2 5B reads the mask as timesteps (ComfyUI's WAN22); the 2.1 and 14B models do not."""
    from diffmesh.models import testmodels_dit
    from diffmesh.models.dit import wan

    sd = testmodels_dit.state_dict("wan21", "tiny")
    net = wan.WanTransformer(wan.config(_shapes(sd)))
    net.load_state_dict(sd)
    x, ctx = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, 64)
    mask = torch.ones_like(x)
    mask[:, :, 0] = 0
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor([500.0]), ctx, denoise_mask=mask), net(x, torch.tensor([500.0]), ctx))


def test_a_wan22_i2v_expert_takes_start_image_channels_without_clip_vision():
    """The Wan 2.2 14B I2V experts have in_dim 36 and no img_emb: ComfyUI's WAN21_T2V class, whose
    concat_cond still puts [4 mask | 16 start-image latent] channels in front (zeros without an image)."""
    from diffmesh.models import testmodels_dit
    from diffmesh.models.dit import family, wan

    sd = testmodels_dit.state_dict("wan21", "tiny-i2v-22")
    shapes = _shapes(sd)
    assert detect_family(shapes) == "wan21"
    cfg = family("wan21").config(shapes)
    assert (cfg["model_type"], cfg["in_dim"], cfg["out_dim"]) == ("t2v", 36, 16)
    net = wan.WanTransformer(cfg)
    net.load_state_dict(sd)
    g = torch.Generator().manual_seed(5)
    x, ctx, t = torch.randn(1, 16, 3, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g), torch.tensor([600.0])
    mask = torch.ones(1, 1, 3, 4, 4)
    mask[:, :, 0] = 0
    extra = family("wan21").extra_conds({"concat_latent_image": torch.randn(1, 16, 3, 4, 4, generator=g),
                                         "concat_mask": mask}, tuple(x.shape))
    assert extra["concat"].shape == (1, 20, 3, 4, 4) and "clip_fea" not in extra
    assert torch.equal(extra["concat"][:, :4, 0], torch.ones(1, 4, 4, 4))       # 1 - mask on the given frame
    with torch.no_grad():
        given = net(x, t, ctx, concat=extra["concat"])
        zeros = net(x, t, ctx)
    assert torch.equal(zeros, net(x, t, ctx, concat=torch.zeros(1, 20, 3, 4, 4)))
    assert (given - zeros).abs().mean() > 1e-4


def detect_family(shapes: dict) -> str:
    from diffmesh.models import detect

    return detect.dit_family(shapes)[0]


# ---------------------------------------------------------------- the Wan 2.2 VAE

def test_the_test_file_has_comfyuis_wan22_vae_keys_and_shapes():
    from diffmesh.models import detect, testmodels_dit

    with safe_open(str(REFERENCE), "pt") as f:
        keys = json.loads(f.metadata()["vae_keys"])
    sd = testmodels_dit.state_dict("wan22vae", "tiny")
    assert {k: list(v.shape) for k, v in sd.items()} == keys
    assert detect.vae_kind(_shapes(sd)) == "wan21"           # ComfyUI's Wan VAE marker; the builder tells 2.2


def test_wan22_vae_decode_and_encode_match_comfyui(comfy):
    from diffmesh.models import testmodels_dit
    from diffmesh.models.vae_wan import build_wan_vae

    vae = build_wan_vae(testmodels_dit.state_dict("wan22vae", "tiny"), "cpu", torch.float32)
    assert (vae.latent_channels, vae.downscale) == (48, 16)
    images = vae.decode(comfy["vae_z"])                      # (9, 32, 48, 3) in [0, 1]
    expected = ((comfy["vae_decoded"][0] + 1) / 2).movedim(0, -1)
    assert images.shape == (9, 32, 48, 3)
    assert float((images - expected).abs().max()) < 1e-5
    frames = ((comfy["vae_x"][0].movedim(0, -1)) + 1) / 2   # (9, 32, 48, 3)
    latent = vae.encode(frames)
    assert latent.shape == (1, 48, 3, 2, 3)
    assert _rel(latent, comfy["vae_encoded"]) < 1e-5


def test_a_truncated_wan22_vae_names_the_missing_keys():
    from diffmesh.errors import ModelError
    from diffmesh.models import testmodels_dit
    from diffmesh.models.vae_wan import build_wan_vae

    sd = testmodels_dit.state_dict("wan22vae", "tiny")
    del sd["decoder.upsamples.1.upsamples.0.residual.2.bias"]
    with pytest.raises(ModelError, match="up_blocks.1.resnets.0.conv1.bias.*complete Wan 2.2 VAE"):
        build_wan_vae(sd, "cpu", torch.float32)


# ---------------------------------------------------------------- chunked causal decode / encode

@pytest.mark.parametrize("family", ["wan21vae", "wan22vae"])
def test_chunked_decode_and_encode_equal_the_one_call_network(family):
    """Decode streams one latent frame at a time to the CPU and encode feeds 1 + 4 + 4 frames: the
    same numbers as diffusers' whole-clip calls (which also loop inside, but keep every frame on the
    device and concatenate)."""
    from diffmesh.models import testmodels_dit
    from diffmesh.models.vae_wan import build_wan_vae

    vae = build_wan_vae(testmodels_dit.state_dict(family, "tiny"), "cpu", torch.float32)
    z = torch.randn(2, vae.latent_channels, 3, 2, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = vae.autoencoder.decode(z).sample                  # (2, 3, 9, H, W) in [-1, 1]
    images = vae.decode(z)
    assert images.shape == (18, 2 * vae.downscale, 3 * vae.downscale, 3)
    assert float((images - vae._to_images(whole)).abs().max()) < 1e-5
    pixels = torch.rand(9, 2 * vae.downscale, 3 * vae.downscale, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mean = vae.autoencoder.encode(pixels.movedim(-1, 0).unsqueeze(0) * 2 - 1).latent_dist.mean
    assert torch.allclose(vae.encode(pixels), mean, atol=1e-6)
