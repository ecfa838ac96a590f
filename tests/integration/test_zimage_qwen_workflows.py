"""Z-Image and Qwen-Image workflows on tiny random models, through `diffmesh run` and every real node:
UNETLoader (detection from the keys), CLIPLoader (lumina2 / qwen_image), ModelSamplingAuraFlow,
CLIPTextEncode, EmptySD3LatentImage, KSampler, VAELoader (Flux VAE / Wan 2.1 VAE), VAEDecode, SaveImage."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

RES = 64


@pytest.fixture(scope="module")
def base_dir(tiny_model_files, tmp_path_factory):
    """A models tree with the tiny transformers and VAEs, plus tiny Qwen3-4B / Qwen2.5-VL text encoders."""
    from diffmesh.models.testmodels import make_test_model

    base = tmp_path_factory.mktemp("tiny-dit-workflows")
    files = {"diffusion_models/tiny-zimage.safetensors": tiny_model_files["dit"]["zimage"],
             "diffusion_models/tiny-qwenimage.safetensors": tiny_model_files["dit"]["qwenimage"],
             "vae/tiny-wan21-vae.safetensors": tiny_model_files["dit"]["wan21vae"],
             "vae/tiny-flux-ae.safetensors": tiny_model_files["flux"]["flux_vae"]}
    for rel, source in files.items():
        target = base / "models" / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy(source, target)
    te = base / "models" / "text_encoders"
    te.mkdir(parents=True)
    make_test_model("qwen3_4b", "tiny", te / "tiny-qwen3-4b.safetensors")
    make_test_model("qwen25_7b", "tiny", te / "tiny-qwen25-7b.safetensors")
    return base


def _workflow(unet, clip, clip_type, vae, shift, cfg, sampler, negative, prefix):
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": clip, "type": clip_type, "device": "default"}},
        "3": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": shift}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a photo of a cat"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": negative}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": RES, "height": RES, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 42, "steps": 2, "cfg": cfg,
                                                   "sampler_name": sampler, "scheduler": "simple", "positive": ["4", 0],
                                                   "negative": ["5", 0], "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": prefix}},
    }


def _run(base_dir, tmp_path, flow, prefix):
    from diffmesh.cli import main

    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(flow))
    assert main(["run", str(path), "--base-directory", str(base_dir), "--cpu"]) == 0
    images = sorted((base_dir / "output").glob(f"{prefix}_*.png"))
    assert len(images) == 1                                  # one image, also for Qwen-Image's 5-D latent
    return np.asarray(Image.open(images[0]).convert("RGB"))


def test_zimage_turbo_default_workflow_runs_on_tiny_models(base_dir, tmp_path):
    """The frontend's default Z-Image Turbo workflow: lumina2 text encoder, AuraFlow shift 3, cfg 1,
    res_multistep, the Flux VAE."""
    flow = _workflow("tiny-zimage.safetensors", "tiny-qwen3-4b.safetensors", "lumina2", "tiny-flux-ae.safetensors",
                     3.0, 1.0, "res_multistep", "", "tiny_zimage")
    image = _run(base_dir, tmp_path, flow, "tiny_zimage")
    assert image.shape == (RES, RES, 3) and image.std() > 0


def test_qwen_image_workflow_with_cfg_and_a_different_negative_runs_on_tiny_models(base_dir, tmp_path):
    flow = _workflow("tiny-qwenimage.safetensors", "tiny-qwen25-7b.safetensors", "qwen_image",
                     "tiny-wan21-vae.safetensors", 3.1, 2.5, "euler", "blurry, low quality, watermark", "tiny_qwen")
    image = _run(base_dir, tmp_path, flow, "tiny_qwen")
    assert image.shape == (RES, RES, 3) and image.std() > 0
