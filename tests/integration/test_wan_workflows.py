"""Wan 2.1 text-to-video on tiny random models through `diffmesh run` and every real node: UNETLoader
(Wan detected from its keys), CLIPLoader type wan (UMT5 with the SentencePiece model inside the file),
ModelSamplingSD3, CLIPTextEncode, EmptyHunyuanLatentVideo, KSampler (cfg 5: positive and negative
batched), VAELoader (Wan 2.1 VAE) + VAEDecode of every frame, and each video output: SaveAnimatedWEBP,
SaveAnimatedPNG, CreateVideo -> SaveVideo (MP4/H.264) -> GetVideoComponents -> SaveImage."""

import json

import av
import numpy as np
import pytest
from PIL import Image

WIDTH, HEIGHT, LENGTH, FPS = 48, 32, 9, 16.0          # 9 frames = 3 latent frames of 6x4


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from diffmesh.models.testmodels import make_test_model

    base = tmp_path_factory.mktemp("tiny-wan-workflows")
    models = base / "models"
    make_test_model("wan21", "tiny", models / "diffusion_models" / "tiny-wan21-t2v.safetensors")
    make_test_model("umt5xxl", "tiny", models / "text_encoders" / "tiny-umt5xxl.safetensors")
    make_test_model("wan21vae", "tiny", models / "vae" / "tiny-wan21-vae.safetensors")
    return base


def _workflow(text: str, prefix: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan21-t2v.safetensors",
                                                     "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-umt5xxl.safetensors", "type": "wan",
                                                     "device": "default"}},
        "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": text}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "low quality, blurry, static"}},
        "6": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": WIDTH, "height": HEIGHT, "length": LENGTH,
                                                                  "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 42, "steps": 3, "cfg": 5.0,
                                                   "sampler_name": "uni_pc", "scheduler": "simple",
                                                   "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-wan21-vae.safetensors"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["9", 0], "filename_prefix": prefix, "fps": FPS,
                                                           "lossless": True, "quality": 90, "method": "default"}},
        "11": {"class_type": "SaveAnimatedPNG", "inputs": {"images": ["9", 0], "filename_prefix": prefix, "fps": FPS,
                                                          "compress_level": 4}},
        "12": {"class_type": "CreateVideo", "inputs": {"images": ["9", 0], "fps": FPS}},
        "13": {"class_type": "SaveVideo", "inputs": {"video": ["12", 0], "filename_prefix": f"video/{prefix}",
                                                     "format": "auto", "codec": "auto"}},
        "14": {"class_type": "GetVideoComponents", "inputs": {"video": ["13", 0]}},
        "15": {"class_type": "SaveImage", "inputs": {"images": ["14", 0], "filename_prefix": f"frames/{prefix}"}},
    }


def _run(base_dir, tmp_path, text, prefix) -> dict:
    from diffmesh.cli import main

    path = tmp_path / f"{prefix}.json"
    path.write_text(json.dumps(_workflow(text, prefix)))
    assert main(["run", str(path), "--base-directory", str(base_dir), "--cpu"]) == 0
    out = base_dir / "output"
    files = {"webp": sorted(out.glob(f"{prefix}_*.webp")), "png": sorted(out.glob(f"{prefix}_*.png")),
             "mp4": sorted((out / "video").glob(f"{prefix}_*.mp4")),
             "frames": sorted((out / "frames").glob(f"{prefix}_*.png"))}
    assert {k: len(v) for k, v in files.items()} == {"webp": 1, "png": 1, "mp4": 1, "frames": LENGTH}
    return files


def _webp_frames(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.n_frames == LENGTH and img.size == (WIDTH, HEIGHT)
        img.load()
        assert img.info["duration"] == int(1000 / FPS)
        frames = []
        for i in range(LENGTH):
            img.seek(i)
            frames.append(np.asarray(img.convert("RGB"), dtype=np.float32))
    return np.stack(frames)


@pytest.fixture(scope="module")
def cat(base_dir, tmp_path_factory):
    return _run(base_dir, tmp_path_factory.mktemp("cat"), "a photo of a cat", "wan_cat")


def test_wan_t2v_workflow_writes_every_frame_in_every_format(cat):
    frames = _webp_frames(cat["webp"][0])
    assert frames.std() > 0
    with Image.open(cat["png"][0]) as img:
        assert img.n_frames == LENGTH and img.size == (WIDTH, HEIGHT)
    with av.open(str(cat["mp4"][0])) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (WIDTH, HEIGHT, FPS)
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert "prompt" in container.metadata
    assert len(decoded) == LENGTH
    # GetVideoComponents hands on the very frames CreateVideo got: the saved PNGs are the WEBP's frames
    pngs = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p in cat["frames"]])
    assert np.array_equal(pngs, frames)
    # frames of a clip differ from each other (time is a real axis, not one image repeated)
    assert np.abs(frames[0] - frames[-1]).mean() > 1.0


def test_the_prompt_changes_the_video(base_dir, tmp_path, cat):
    fox = _run(base_dir, tmp_path, "a red fox in the snow", "wan_fox")
    assert np.abs(_webp_frames(fox["webp"][0]) - _webp_frames(cat["webp"][0])).mean() > 0.5


# ---------------------------------------------------------------- image to video

def _i2v_workflow(start: str | None, prefix: str) -> dict:
    flow = _workflow("a photo of a cat", prefix)
    flow["1"]["inputs"]["unet_name"] = "tiny-wan21-i2v.safetensors"
    flow["6"] = {"class_type": "WanImageToVideo", "inputs": {"positive": ["4", 0], "negative": ["5", 0],
                                                             "vae": ["8", 0], "width": WIDTH, "height": HEIGHT,
                                                             "length": LENGTH, "batch_size": 1}}
    flow["7"]["inputs"].update(positive=["6", 0], negative=["6", 1], latent_image=["6", 2], sampler_name="euler")
    if start is not None:
        flow["16"] = {"class_type": "LoadImage", "inputs": {"image": start}}
        flow["6"]["inputs"]["start_image"] = ["16", 0]
    return flow


def test_wan_image_to_video_takes_the_start_frame(base_dir, tmp_path):
    """WanImageToVideo's start-image latent and mask reach the image-to-video model (36 input channels):
    different start images give different videos, and no start image differs from both."""
    from diffmesh.cli import main
    from diffmesh.models import testmodels_dit

    testmodels_dit.write("wan21", "tiny-i2v", base_dir / "models" / "diffusion_models" / "tiny-wan21-i2v.safetensors")
    (base_dir / "input").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("red.png", "noise.png"):
        pixels = np.zeros((HEIGHT * 2, WIDTH * 2, 3), np.uint8)
        pixels[..., 0] = 220
        if name == "noise.png":
            pixels = rng.integers(0, 255, pixels.shape, dtype=np.uint8)
        Image.fromarray(pixels).save(base_dir / "input" / name)
    videos = {}
    for start in ("red.png", "noise.png", None):
        prefix = f"wan_i2v_{start or 'none'}".replace(".png", "")
        path = tmp_path / f"{prefix}.json"
        path.write_text(json.dumps(_i2v_workflow(start, prefix)))
        assert main(["run", str(path), "--base-directory", str(base_dir), "--cpu"]) == 0
        videos[start] = _webp_frames(sorted((base_dir / "output").glob(f"{prefix}_*.webp"))[0])
    assert np.abs(videos["red.png"] - videos["noise.png"]).mean() > 0.5
    assert np.abs(videos["red.png"] - videos[None]).mean() > 0.5
