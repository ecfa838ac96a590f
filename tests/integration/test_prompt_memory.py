"""Whole prompts under every VRAM mode and under a too-small budget, through `diffmesh run`:
every fp32 mode gives the highvram image bit for bit, and a budget the model does not fit
recovers (lower mode, retry) instead of failing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffmesh.cli import main

MB = 1 / 1024  # GB
# The tiny CLIP's token embedding (6 MB) never streams, so 6.5 MB is the smallest budget a whole
# prompt fits: the UNet (4 MB) and VAE (3.9 MB) then share the device with it or evict it.
BUDGET = str(6.5 * MB)
# Below the whole tiny CLIP (6.14 MB) but above its embedding: highvram runs out of memory on the
# text encoder and must recover by streaming its layers.
TIGHT = str(6.12 * MB)


def workflow() -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (red:1.2) cube", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": 3, "steps": 3, "cfg": 6.0, "sampler_name": "euler_ancestral",
                                                  "scheduler": "karras", "denoise": 1.0, "model": ["4", 0],
                                                  "positive": ["6", 0], "negative": ["7", 0],
                                                  "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mem", "images": ["8", 0]}},
    }


@pytest.fixture
def run_with(models_base, tmp_path, capsys):
    """Run the workflow with device flags; returns (exit code, stderr, images as arrays)."""
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow()))
    counter = iter(range(100))

    def run(*flags: str):
        out_dir = tmp_path / f"out{next(counter)}"
        code = main(["run", str(path), "--base-directory", str(tmp_path), "--models-dir", str(models_base / "models"),
                     "--output-directory", str(out_dir), "--cpu", *flags])
        _, err = capsys.readouterr()
        images = [np.asarray(Image.open(p)) for p in sorted(out_dir.glob("*.png"))]
        return code, err, images
    return run


@pytest.fixture(scope="module")
def highvram_images(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("highvram")
    path = base / "wf.json"
    path.write_text(json.dumps(workflow()))
    assert main(["run", str(path), "--base-directory", str(base), "--models-dir", str(models_base / "models"),
                 "--output-directory", str(base / "out"), "--cpu", "--highvram"]) == 0
    return [np.asarray(Image.open(p)) for p in sorted((base / "out").glob("*.png"))]


@pytest.mark.parametrize("flags", [("--normalvram",), ("--lowvram", "--vram-budget", BUDGET),
                                   ("--novram",), ("--normalvram", "--disable-smart-memory")])
def test_every_fp32_vram_mode_gives_the_highvram_image(run_with, highvram_images, flags):
    code, err, images = run_with(*flags)
    assert code == 0, err
    assert len(images) == len(highvram_images) == 2
    for got, want in zip(images, highvram_images):
        assert np.array_equal(got, want)


def test_highvram_under_a_budget_the_model_does_not_fit_recovers_and_completes(run_with, highvram_images, caplog):
    code, err, images = run_with("--highvram", "--vram-budget", TIGHT)
    assert code == 0, err
    assert any("out of memory" in r.message and "retrying in lowvram" in r.message for r in caplog.records)
    for got, want in zip(images, highvram_images):
        assert np.array_equal(got, want)


def test_bf16_unet_stays_close_to_the_fp32_image(run_with, highvram_images):
    code, err, images = run_with("--bf16-unet")
    assert code == 0, err
    for got, want in zip(images, highvram_images):
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.mean() < 8, diff.mean()


def test_a_budget_too_small_for_any_mode_fails_with_the_device_and_the_flag_to_try(run_with):
    code, err, images = run_with("--novram", "--vram-budget", str(0.001 * MB))
    assert code == 1
    assert images == []
    assert "cpu" in err and "--" in err and "Traceback" not in err
