"""A Wan 2.1 text-to-video workflow on tiny models, loaded into the official frontend in headless Chromium
and queued from the page: the SaveVideo node's output is shown in the page as a <video> element
playing the MP4 from /view, and the animated WEBP as an <img> from /view."""

from __future__ import annotations

import os

import pytest
from browser import CHROMIUM, load, open_page
from serverproc import ServerProcess

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason=f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")]

LENGTH = 5

# The text-to-video template's graph (UNETLoader, CLIPLoader wan, ModelSamplingSD3 shift 8,
# EmptyHunyuanLatentVideo, KSampler uni_pc, VAEDecode, CreateVideo -> SaveVideo) on the tiny files.
WAN_WORKFLOW = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-wan21-t2v.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-umt5xxl.safetensors", "type": "wan",
                                                 "device": "default"}},
    "3": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
    "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a paper boat on a river"}},
    "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "blurry, static"}},
    "6": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": LENGTH,
                                                              "batch_size": 1}},
    "7": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "seed": 3, "control_after_generate": "fixed",
                                               "steps": 2, "cfg": 5.0, "sampler_name": "uni_pc",
                                               "scheduler": "simple", "positive": ["4", 0], "negative": ["5", 0],
                                               "latent_image": ["6", 0], "denoise": 1.0}},
    "8": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-wan21-vae.safetensors"}},
    "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
    "10": {"class_type": "CreateVideo", "inputs": {"images": ["9", 0], "fps": 16.0}},
    "11": {"class_type": "SaveVideo", "inputs": {"video": ["10", 0], "filename_prefix": "video/wan",
                                                 "format": "auto", "codec": "auto"}},
    "12": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["9", 0], "filename_prefix": "wan", "fps": 16.0,
                                                       "lossless": False, "quality": 80, "method": "default"}},
}


@pytest.fixture(scope="module")
def wan_server(tmp_path_factory):
    from diffmesh.models.testmodels import make_test_model

    root = tmp_path_factory.mktemp("ui-wan")
    models = root / "models"
    make_test_model("wan21", "tiny", models / "diffusion_models" / "tiny-wan21-t2v.safetensors")
    make_test_model("umt5xxl", "tiny", models / "text_encoders" / "tiny-umt5xxl.safetensors")
    make_test_model("wan21vae", "tiny", models / "vae" / "tiny-wan21-vae.safetensors")
    with ServerProcess(root / "base", "--models-dir", str(models), "--cpu") as server:
        server.wait_ready()
        yield server


def test_a_wan_video_workflow_queued_from_the_page_shows_its_video(wan_server):
    with open_page(wan_server) as page:
        load(page, wan_server.url)
        page.evaluate("""async (workflow) => {
            window.__executed = [];
            window.app.api.addEventListener('executed', e => window.__executed.push(e.detail));
            await window.app.loadApiJson(workflow, 'wan_t2v.json');
        }""", WAN_WORKFLOW)
        types = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
        assert {"EmptyHunyuanLatentVideo", "ModelSamplingSD3", "CreateVideo", "SaveVideo"} <= set(types)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        page.wait_for_function("() => window.__executed.length >= 2", timeout=300000)
        outputs = {e["node"]: e["output"] for e in page.evaluate("() => window.__executed")}
        video = outputs["11"]["images"][0]
        assert video["filename"].endswith(".mp4") and video["subfolder"] == "video"
        assert outputs["12"]["images"][0]["filename"].endswith(".webp")
        # the page shows the MP4 in a <video> element whose source /view serves (the canvas draws a
        # node's output preview when the node is in view: bring SaveVideo there, as a user scrolls to it)
        page.evaluate("""() => { const c = window.app.canvas, n = window.app.graph.getNodeById(11);
            c.centerOnNode(n); c.setDirty(true, true); }""")
        page.wait_for_function("""(name) => [...document.querySelectorAll('video')].some(v =>
            (v.currentSrc || v.src || v.querySelector('source')?.src || '').includes(encodeURIComponent(name)))""",
                               arg=video["filename"], timeout=60000)
        src = page.evaluate("""(name) => { const v = [...document.querySelectorAll('video')].find(v =>
            (v.currentSrc || v.src || v.querySelector('source')?.src || '').includes(encodeURIComponent(name)));
            return v.currentSrc || v.src || v.querySelector('source').src; }""", video["filename"])
        assert "/view?" in src
        answer = page.evaluate("""async (src) => { const r = await fetch(src);
            return [r.status, r.headers.get('content-type'), (await r.arrayBuffer()).byteLength]; }""", src)
        assert answer[0] == 200 and answer[1] == "video/mp4" and answer[2] > 100
        # the browser decodes it: its metadata gives the clip's size and length
        meta = page.evaluate("""async (name) => { const v = [...document.querySelectorAll('video')].find(v =>
            (v.currentSrc || v.src || v.querySelector('source')?.src || '').includes(encodeURIComponent(name)));
            if (v.readyState < 1) await new Promise(r => v.addEventListener('loadedmetadata', r, {once: true}));
            return [v.videoWidth, v.videoHeight, v.duration]; }""", video["filename"])
        assert meta[:2] == [32, 32] and abs(meta[2] - LENGTH / 16.0) < 0.1
        assert page.errors == []
