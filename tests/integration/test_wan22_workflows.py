"""Wan 2.2 workflows on tiny random models through `diffmesh run` and every real node:
  - TI2V 5B: UNETLoader (48-channel file -> family wan22), VAELoader (Wan 2.2 VAE),
    Wan22ImageToVideoLatent with and without a start image, KSampler, VAEDecode, SaveAnimatedWEBP;
  - 14B T2V as two experts (high noise, low noise): two UNETLoaders, ModelSamplingSD3 shift 8 on each,
    KSamplerAdvanced 0 -> k (add_noise enable, return_with_leftover_noise enable) then k -> end
    (add_noise disable), as the official ComfyUI workflows chain them;
  - WanImageToVideo's clip_vision_output reaching an image-to-video model's img_emb rows.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

WIDTH, HEIGHT, LENGTH = 64, 32, 9         # Wan 2.2: 16x spatial -> 4x2 latent, 3 latent frames
STEPS, SWITCH = 4, 2


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from diffmesh.models import testmodels_dit
    from diffmesh.models.testmodels import make_test_model

    base = tmp_path_factory.mktemp("tiny-wan22")
    models = base / "models"
    testmodels_dit.write("wan21", "tiny-ti2v", models / "diffusion_models" / "tiny-wan22-ti2v.safetensors")
    # two experts: same layout, different weights (the high-noise and low-noise models of Wan 2.2 14B)
    testmodels_dit.write("wan21", "tiny", models / "diffusion_models" / "tiny-wan22-high.safetensors", seed=1)
    testmodels_dit.write("wan21", "tiny", models / "diffusion_models" / "tiny-wan22-low.safetensors", seed=2)
    make_test_model("umt5xxl", "tiny", models / "text_encoders" / "tiny-umt5xxl.safetensors")
    testmodels_dit.write("wan22vae", "tiny", models / "vae" / "tiny-wan22-vae.safetensors")
    (base / "input").mkdir()
    pixels = np.zeros((HEIGHT * 2, WIDTH * 2, 3), np.uint8)
    pixels[..., 0], pixels[:HEIGHT, :, 2] = 220, 180
    Image.fromarray(pixels).save(base / "input" / "start.png")
    return base


def _run(base_dir, tmp_path, flow: dict, name: str) -> None:
    from diffmesh.cli import main

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(flow))
    assert main(["run", str(path), "--base-directory", str(base_dir), "--cpu"]) == 0


def _latent(base_dir, prefix: str) -> torch.Tensor:
    files = sorted((base_dir / "output").glob(f"{prefix}_*.latent"))
    assert len(files) == 1, files
    return load_file(str(files[0]))["latent_tensor"]


def _text(clip: str = "2") -> dict:
    return {"4": {"class_type": "CLIPTextEncode", "inputs": {"clip": [clip, 0], "text": "a red boat on a lake"}},
            "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": [clip, 0], "text": "blurry, static"}}}


CLIP = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-umt5xxl.safetensors", "type": "wan",
                                               "device": "default"}}


# ---------------------------------------------------------------- TI2V 5B

def _ti2v_flow(prefix: str, start: bool) -> dict:
    flow = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan22-ti2v.safetensors",
                                                     "weight_dtype": "default"}},
        "2": CLIP, **_text(),
        "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-wan22-vae.safetensors"}},
        "6": {"class_type": "Wan22ImageToVideoLatent", "inputs": {"vae": ["8", 0], "width": WIDTH, "height": HEIGHT,
                                                                  "length": LENGTH, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 7, "steps": 3, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["9", 0], "filename_prefix": prefix,
                                                           "fps": 24.0, "lossless": True, "quality": 90,
                                                           "method": "default"}},
        "11": {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": f"{prefix}_out"}},
        "12": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": f"{prefix}_in"}},
    }
    if start:
        flow["13"] = {"class_type": "LoadImage", "inputs": {"image": "start.png"}}
        flow["6"]["inputs"]["start_image"] = ["13", 0]
    return flow


def test_wan22_ti2v_keeps_the_start_frame_and_samples_the_rest(base_dir, tmp_path):
    """With a start image the first latent frame is the VAE latent of the image, kept through sampling
    (noise_mask 0 there, timestep 0 for that frame); the other frames are generated. Without one, the
    latent is 48 zero channels and every frame is generated."""
    _run(base_dir, tmp_path, _ti2v_flow("ti2v_start", True), "ti2v_start")
    _run(base_dir, tmp_path, _ti2v_flow("ti2v_none", False), "ti2v_none")
    given, out = _latent(base_dir, "ti2v_start_in"), _latent(base_dir, "ti2v_start_out")
    assert given.shape == out.shape == (1, 48, 3, HEIGHT // 16, WIDTH // 16)
    assert given[:, :, 0].abs().max() > 0.1
    assert torch.allclose(out[:, :, 0], given[:, :, 0], atol=1e-5)           # the start frame is kept
    assert (out[:, :, 1:] - given[:, :, 1:]).abs().mean() > 0.05               # the rest is sampled
    empty = _latent(base_dir, "ti2v_none_in")
    assert empty.shape == given.shape and not empty.any()
    plain = _latent(base_dir, "ti2v_none_out")
    assert (plain[:, :, 0] - out[:, :, 0]).abs().mean() > 0.05
    webp = sorted((base_dir / "output").glob("ti2v_start_*.webp"))
    with Image.open(webp[0]) as img:
        assert (img.n_frames, img.size) == (LENGTH, (WIDTH, HEIGHT))


def test_wan22_latent_node_refuses_a_16_channel_vae(base_dir, tmp_path, capsys):
    from diffmesh.cli import main
    from diffmesh.models import testmodels_dit

    testmodels_dit.write("wan21vae", "tiny", base_dir / "models" / "vae" / "tiny-wan21-vae.safetensors")
    flow = _ti2v_flow("ti2v_wrong_vae", True)
    flow["8"]["inputs"]["vae_name"] = "tiny-wan21-vae.safetensors"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(flow))
    assert main(["run", str(path), "--base-directory", str(base_dir), "--cpu"]) != 0
    captured = capsys.readouterr()
    assert "Wan 2.2 VAE" in captured.out + captured.err and "48 channels" in captured.out + captured.err


# ---------------------------------------------------------------- 14B: two experts

def _advanced(model: str, latent: list, add_noise: str, start: int, end: int, leftover: str) -> dict:
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "model": [model, 0], "add_noise": add_noise, "noise_seed": 11, "steps": STEPS, "cfg": 3.5,
        "sampler_name": "euler", "scheduler": "simple", "positive": ["4", 0], "negative": ["5", 0],
        "latent_image": latent, "start_at_step": start, "end_at_step": end, "return_with_leftover_noise": leftover}}


def test_two_experts_chain_as_the_official_workflow(base_dir, tmp_path):
    """high (steps 0 -> 2, leftover noise) then low (2 -> end, no new noise). The same model in both halves
    equals one KSamplerAdvanced run over all steps (that is the chain's definition); the two experts
    together give a video unlike either expert alone."""
    flow = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan22-high.safetensors",
                                                     "weight_dtype": "default"}},
        "21": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan22-low.safetensors",
                                                      "weight_dtype": "default"}},
        "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "23": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["21", 0], "shift": 8.0}},
        "2": CLIP, **_text(),
        "6": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5,
                                                                  "batch_size": 1}},
        # the official chain: high-noise expert first, low-noise expert after the switch step
        "30": _advanced("3", ["6", 0], "enable", 0, SWITCH, "enable"),
        "31": _advanced("23", ["30", 0], "disable", SWITCH, 10000, "disable"),
        # the same expert in both halves, and single runs of each expert
        "40": _advanced("23", ["6", 0], "enable", 0, SWITCH, "enable"),
        "41": _advanced("23", ["40", 0], "disable", SWITCH, 10000, "disable"),
        "50": _advanced("23", ["6", 0], "enable", 0, 10000, "disable"),
        "51": _advanced("3", ["6", 0], "enable", 0, 10000, "disable"),
    }
    for node, prefix in (("30", "half"), ("31", "chain"), ("41", "same"), ("50", "low"), ("51", "high")):
        flow[f"s{node}"] = {"class_type": "SaveLatent", "inputs": {"samples": [node, 0], "filename_prefix": prefix}}
    _run(base_dir, tmp_path, flow, "experts")
    half, chain, same, low, high = (_latent(base_dir, p) for p in ("half", "chain", "same", "low", "high"))
    assert chain.shape == (1, 16, 2, 4, 4)
    assert torch.allclose(same, low, atol=1e-5, rtol=1e-5)
    assert half.abs().mean() > 0.3                   # leftover noise: the first half stops at sigma > 0
    for alone in (low, high):
        assert (chain - alone).abs().mean() > 1e-3


# ---------------------------------------------------------------- WanImageToVideo + CLIP vision

def test_clip_vision_rows_reach_the_image_to_video_model():
    """WanImageToVideo puts `clip_vision_output` on both conditionings; the I2V model (img_emb keys)
    projects its penultimate hidden states (B, 257, 1280) in front of the text rows and attends them
    with k_img/v_img: the prediction changes with the image rows, and differs from no rows."""
    from diffmesh.models import testmodels_dit
    from diffmesh.models.dit import family, wan
    from diffmesh.nodes.video import wan_image_to_video

    sd = testmodels_dit.state_dict("wan21", "tiny-i2v")
    cfg = family("wan21").config({k: tuple(v.shape) for k, v in sd.items()})
    assert cfg["model_type"] == "i2v" and cfg["in_dim"] == 36
    net = wan.WanTransformer(cfg)
    net.load_state_dict(sd)

    class Output:                                    # the attribute CLIPVisionEncode's output carries
        def __init__(self, rows):
            self.penultimate_hidden_states = rows

    g = torch.Generator().manual_seed(3)
    rows_a, rows_b = (torch.randn(1, 257, 1280, generator=g) for _ in range(2))
    cond = [[torch.zeros(1, 4, 64), {}]]
    positive, negative, latent = wan_image_to_video(None, cond, cond, None, 32, 32, 5, 1,
                                                    clip_vision_output=Output(rows_a))
    assert positive[0][1]["clip_vision_output"].penultimate_hidden_states is rows_a
    assert negative[0][1]["clip_vision_output"].penultimate_hidden_states is rows_a
    extra = family("wan21").extra_conds(positive[0][1], tuple(latent["samples"].shape))
    assert torch.equal(extra["clip_fea"], rows_a)

    x, ctx, t = torch.randn(1, 16, 2, 4, 4, generator=g), torch.randn(1, 6, 64, generator=g), torch.tensor([700.0])
    with torch.no_grad():
        with_a = net(x, t, ctx, clip_fea=rows_a)
        with_b = net(x, t, ctx, clip_fea=rows_b)
        without = net(x, t, ctx)
    assert (with_a - with_b).abs().mean() > 1e-4
    assert (with_a - without).abs().mean() > 1e-4
