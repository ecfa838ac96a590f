"""A Wan 2.1 text-to-video prompt on tiny models through a real `diffmesh serve`: the history lists the
MP4 and the animated WEBP the way ComfyUI's PreviewVideo reports them (`images` + `animated`), and
/view serves them with video/mp4 and image/webp, whole and by byte range (browsers seek videos so)."""

from __future__ import annotations

import io

import av
import pytest
from serverproc import ServerProcess, wait_for_history

LENGTH = 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from diffmesh.models.testmodels import make_test_model

    models = tmp_path_factory.mktemp("wan-server") / "models"
    make_test_model("wan21", "tiny", models / "diffusion_models" / "tiny-wan21-t2v.safetensors")
    make_test_model("umt5xxl", "tiny", models / "text_encoders" / "tiny-umt5xxl.safetensors")
    make_test_model("wan21vae", "tiny", models / "vae" / "tiny-wan21-vae.safetensors")
    return models


def _prompt() -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan21-t2v.safetensors",
                                                     "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-umt5xxl.safetensors", "type": "wan"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a cat"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry"}},
        "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": LENGTH,
                                                                  "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 2, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "positive": ["3", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-wan21-vae.safetensors"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "CreateVideo", "inputs": {"images": ["8", 0], "fps": 16.0}},
        "10": {"class_type": "SaveVideo", "inputs": {"video": ["9", 0], "filename_prefix": "video/ComfyUI",
                                                     "format": "auto", "codec": "auto"}},
        "11": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI",
                                                           "fps": 16.0, "lossless": False, "quality": 80,
                                                           "method": "default"}},
    }


def test_wan_video_prompt_is_listed_and_served(tmp_path, models):
    with ServerProcess(tmp_path / "base", "--models-dir", str(models), "--preview-method", "none") as server:
        server.wait_ready()
        with server.client() as http:
            response = http.post("/prompt", json={"prompt": _prompt(), "client_id": "wan-test"})
            assert response.status_code == 200, response.text
            entry = wait_for_history(http, response.json()["prompt_id"], timeout=300)
            assert entry["status"]["status_str"] == "success", entry["status"]
            video = entry["outputs"]["10"]
            assert video["animated"] == [True]
            saved = video["images"][0]
            assert saved["subfolder"] == "video" and saved["type"] == "output" and saved["filename"].endswith(".mp4")
            params = {"filename": saved["filename"], "subfolder": "video", "type": "output"}
            whole = http.get("/view", params=params)
            assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
            with av.open(io.BytesIO(whole.content)) as container:
                assert container.streams.video[0].frames == LENGTH
            part = http.get("/view", params=params, headers={"Range": "bytes=0-99"})
            assert part.status_code == 206 and part.content == whole.content[:100]

            webp = entry["outputs"]["11"]["images"][0]
            served = http.get("/view", params={"filename": webp["filename"], "subfolder": "", "type": "output"})
            assert served.status_code == 200 and served.headers["content-type"] == "image/webp"
