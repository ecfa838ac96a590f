"""The official frontend (the pinned current one), served by `diffmesh serve`, in headless Chromium:
it loads with no page errors and no 4xx/5xx on its own requests, lists the core nodes, reads the
jobs API, and runs its default workflow for new users (Z-Image Turbo) on the tiny test models."""

from __future__ import annotations

import os

import pytest
from browser import CHROMIUM, load, open_page, tiny_models_tree
from serverproc import ServerProcess

# Without chromium a developer's run skips these; CI (CI set) installs it, so there it never skips.
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason=f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")]

# The frontend's default workflow, pointed at the tiny files (widget name -> value per node type).
TINY_DEFAULT = {"UNETLoader": {"unet_name": "tiny-zimage.safetensors"},
                "CLIPLoader": {"clip_name": "tiny-qwen3-4b.safetensors"},
                "VAELoader": {"vae_name": "tiny-flux-ae.safetensors"},
                "EmptySD3LatentImage": {"width": 64, "height": 64},
                "KSampler": {"steps": 2}}


@pytest.fixture(scope="module")
def ui_server(tiny_model_files, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    models = tiny_models_tree(tiny_model_files, root)
    with ServerProcess(root / "base", "--models-dir", str(models), "--cpu") as server:
        server.wait_ready()
        yield server


def test_frontend_loads_without_errors_reads_jobs_and_lists_core_nodes(ui_server):
    with open_page(ui_server) as page:
        jobs = []
        page.on("response", lambda r: jobs.append(r.status) if "/api/jobs?" in r.url else None)
        load(page, ui_server.url)
        types = page.evaluate("() => Object.keys(window.LiteGraph?.registered_node_types ?? {})")
        for name in ("KSampler", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEDecode", "SaveImage",
                     "UNETLoader", "CLIPLoader", "ModelSamplingAuraFlow", "EmptySD3LatentImage",
                     "MultiGPU_WorkUnits", "SelectModelDevice"):
            assert name in types
        page.get_by_text("active").first.click()          # the queue panel: it polls the jobs API
        page.wait_for_timeout(2000)
        assert jobs and set(jobs) == {200}
        assert page.errors == []


def test_default_workflow_is_z_image_turbo_and_runs_from_the_page(ui_server):
    with open_page(ui_server) as page:
        load(page, ui_server.url)
        nodes = page.evaluate("""() => Object.fromEntries(window.app.graph._nodes.map(n =>
            [n.type, Object.fromEntries((n.widgets ?? []).map(w => [w.name, w.value]))]))""")
        assert {"UNETLoader", "CLIPLoader", "ModelSamplingAuraFlow", "EmptySD3LatentImage", "KSampler",
                "VAELoader", "VAEDecode", "SaveImage"} <= set(nodes)
        assert nodes["CLIPLoader"]["type"] == "lumina2"
        assert nodes["KSampler"]["sampler_name"] == "res_multistep" and nodes["KSampler"]["cfg"] == 1
        page.evaluate("""(values) => {
            window.__executed = [];
            window.app.api.addEventListener('executed', e => window.__executed.push(e.detail));
            for (const node of window.app.graph._nodes) {
                for (const [name, value] of Object.entries(values[node.type] ?? {})) {
                    node.widgets.find(w => w.name === name).value = value;
                }
            }
        }""", TINY_DEFAULT)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        page.wait_for_function("() => window.__executed.length > 0", timeout=300000)
        image = page.evaluate("() => window.__executed[0]")["output"]["images"][0]
        status = page.evaluate("""async (img) => (await fetch(`/api/view?filename=${encodeURIComponent(img.filename)}`
            + `&subfolder=${img.subfolder}&type=${img.type}`)).status""", image)
        assert status == 200
        assert page.errors == []


# A Flux.1-dev text-to-image workflow as the official template builds it (DualCLIPLoader flux,
# FluxGuidance 3.5, ConditioningZeroOut negative, euler/simple at cfg 1), on the tiny files.
FLUX_WORKFLOW = {
    "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors", "weight_dtype": "default"}},
    "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "tiny-clip_l.safetensors",
                                                     "clip_name2": "tiny-t5xxl.safetensors", "type": "flux"}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["2", 0]}},
    "4": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["3", 0], "guidance": 3.5}},
    "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
    "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "7": {"class_type": "KSampler", "inputs": {"seed": 7, "control_after_generate": "fixed", "steps": 2, "cfg": 1.0,
                                              "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0,
                                              "model": ["1", 0], "positive": ["4", 0], "negative": ["5", 0],
                                              "latent_image": ["6", 0]}},
    "8": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-flux-ae.safetensors"}},
    "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
    "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "flux", "images": ["9", 0]}},
}


def test_a_flux_workflow_loaded_into_the_page_runs_and_shows_its_image(ui_server):
    with open_page(ui_server) as page:
        load(page, ui_server.url)
        page.evaluate("""async (workflow) => {
            window.__executed = [];
            window.app.api.addEventListener('executed', e => window.__executed.push(e.detail));
            await window.app.loadApiJson(workflow, 'flux.json');
        }""", FLUX_WORKFLOW)
        types = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
        assert {"UNETLoader", "DualCLIPLoader", "FluxGuidance", "ConditioningZeroOut"} <= set(types)
        page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
        page.wait_for_function("() => window.__executed.length > 0", timeout=300000)
        image = page.evaluate("() => window.__executed[0]")["output"]["images"][0]
        assert image["filename"].startswith("flux")
        status = page.evaluate("""async (img) => (await fetch(`/api/view?filename=${encodeURIComponent(img.filename)}`
            + `&subfolder=${img.subfolder}&type=${img.type}`)).status""", image)
        assert status == 200
        assert page.errors == []
