"""Subgraphs in the current frontend, served by `diffmesh serve`, in headless Chromium.

The hand-written subgraph workflows of the converter's unit tests (nested, promoted widgets,
bypassed and muted nodes inside, a bypassed instance) give, in the page, the API prompt diffmesh's
converter makes of them, both as written and as the frontend saves them again.

A tiny SD1 workflow is loaded into the page; the frontend itself turns its prompts and KSampler
into a subgraph and that subgraph plus VAEDecode into a second one (nested). Both workflows, the
nested one and its flat twin, are then loaded into the page again and queued from the UI: their
images are pixel-equal, the nested run really executed (its KSampler is not a cache hit), and the
API prompt the frontend posted for each equals what diffmesh's own converter makes of the
workflow the frontend saved with it (`extra_pnginfo.workflow`).
"""

from __future__ import annotations

import importlib.util
import io
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from browser import CHROMIUM, load, open_page
from PIL import Image
from serverproc import ServerProcess

from diffmesh.graph.workflow import ui_to_api
from diffmesh.nodes.registry import build_registry

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason=f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")]

FLAT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 11, "control_after_generate": "fixed", "steps": 2, "cfg": 6.0,
                                              "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                              "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                              "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red cube", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "subgraph", "images": ["8", 0]}},
}

# Converts nodes of the given types into a subgraph, the way the editor's "Convert to Subgraph" does.
CONVERT = """(types) => {
    const items = new Set(window.app.graph._nodes.filter(n => types.includes(n.type)
        || (types.includes('<subgraph>') && n.isSubgraphNode?.())));
    window.app.graph.convertToSubgraph(items);
}"""
# The workflow as the editor saves it (JSON.stringify applies the links' toJSON, which a plain
# object copy would miss).
SAVE = "() => JSON.parse(JSON.stringify(window.app.graph.serialize()))"


@pytest.fixture(scope="module")
def sub_server(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("subgraph-ui") / "base"
    with ServerProcess(base, "--models-dir", str(models_base / "models"), "--cpu") as server:
        server.wait_ready()
        yield server


def queue_from_page(page, workflow: dict, name: str) -> dict:
    """Loads a UI workflow into the page, queues it, and returns what the frontend posted
    (`body`), the node ids that ran and were cached, and the saved image's PNG bytes."""
    posted = []
    page.on("request", lambda r: posted.append(r.post_data_json)
            if r.method == "POST" and r.url.split("?")[0].endswith("/prompt") else None)
    page.evaluate("""async ([workflow, name]) => {
        window.__events = {executed: [], executing: [], cached: []};
        await window.app.loadGraphData(workflow, true, true, name);
    }""", [workflow, name])
    page.evaluate("""async () => { await window.app.queuePrompt(0, 1); }""")
    page.wait_for_function("() => window.__events.executed.length > 0", timeout=300000)
    events = page.evaluate("() => window.__events")
    image = events["executed"][0]["output"]["images"][0]
    data = page.evaluate("""async (img) => {
        const r = await fetch(`/api/view?filename=${encodeURIComponent(img.filename)}&subfolder=${img.subfolder}`
            + `&type=${img.type}`);
        return Array.from(new Uint8Array(await r.arrayBuffer()));
    }""", image)
    return {"body": posted[-1], "executing": events["executing"], "cached": events["cached"], "png": bytes(data)}


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def strip(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_nested_subgraph_queued_from_the_page_matches_its_flat_twin(sub_server):
    registry = build_registry()
    with open_page(sub_server) as page:
        load(page, sub_server.url)
        page.evaluate("""() => {
            for (const [kind, key] of [['executed', 'executed'], ['executing', 'executing'],
                                       ['execution_cached', 'cached']]) {
                window.app.api.addEventListener(kind, e => window.__events?.[key].push(e.detail));
            }
        }""")
        page.evaluate("async (api) => { await window.app.loadApiJson(api, 'flat.json'); }", FLAT)
        flat_ui = page.evaluate(SAVE)
        page.evaluate(CONVERT, ["CLIPTextEncode", "KSampler"])
        page.evaluate(CONVERT, ["<subgraph>", "VAEDecode"])
        nested_ui = page.evaluate(SAVE)
        assert len(nested_ui["definitions"]["subgraphs"]) == 2
        # two workflows of their own (the page keeps one tab per workflow id)
        flat_ui["id"], nested_ui["id"] = str(uuid.uuid4()), str(uuid.uuid4())

        nested = queue_from_page(page, nested_ui, "nested.json")
        page.evaluate("""async () => { await fetch('/api/free', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({unload_models: true, free_memory: true})}); }""")
        flat = queue_from_page(page, flat_ui, "flat.json")
        assert page.errors == []

    nested_prompt, flat_prompt = nested["body"]["prompt"], flat["body"]["prompt"]
    sampler = next(k for k, v in nested_prompt.items() if v["class_type"] == "KSampler")
    assert sampler.count(":") == 2                       # outer instance : inner instance : KSampler
    assert sorted(v["class_type"] for v in nested_prompt.values()) == \
        sorted(v["class_type"] for v in flat_prompt.values())
    # diffmesh's converter gives the prompt the frontend queued, for both workflows
    for run in (nested, flat):
        saved = run["body"]["extra_data"]["extra_pnginfo"]["workflow"]
        assert strip(ui_to_api(saved, registry)) == strip(run["body"]["prompt"])
    # both runs executed their KSampler (no cache hit between them), and the images are equal
    flat_sampler = next(k for k, v in flat_prompt.items() if v["class_type"] == "KSampler")
    assert sampler in nested["executing"] and flat_sampler in flat["executing"]
    assert flat_sampler not in [n for event in flat["cached"] for n in event.get("nodes", [])]
    assert np.array_equal(pixels(nested["png"]), pixels(flat["png"]))


def _unit_workflows():
    """The workflows of tests/unit/graph/test_subgraph_convert.py (loaded by path: the test
    folders are not packages)."""
    path = Path(__file__).parents[1] / "unit" / "graph" / "test_subgraph_convert.py"
    spec = importlib.util.spec_from_file_location("subgraph_convert_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bypassed_inside = module.one_level()
    sub = bypassed_inside["definitions"]["subgraphs"][0]
    sub["nodes"].append(module.node(4, "LatentUpscaleBy", mode=4, widgets=["nearest-exact", 1.5],
                                    inputs=[{"name": "samples", "type": "LATENT", "link": 8}],
                                    outputs=[{"name": "LATENT", "type": "LATENT", "links": [9]}]))
    sub["nodes"].append(module.node(5, "SaveImage", mode=2, widgets=["muted"],
                                    inputs=[{"name": "images", "type": "IMAGE", "link": None}]))
    sub["links"][7] = module.link(8, 3, 0, 4, 0, "LATENT")
    sub["links"].append(module.link(9, 4, 0, -20, 0, "LATENT"))
    sub["outputs"][0]["linkIds"] = [9]
    bypassed_instance = module.one_level()
    bypassed_instance["nodes"][2]["mode"] = 4
    unsaved_seed = module.nested()
    del unsaved_seed["nodes"][2]["widgets_values"]
    dynamic = module.one_level()        # deterministic dynamic prompt: one option per choice, a comment
    dynamic["definitions"]["subgraphs"][0]["nodes"][0]["widgets_values"] = ["a {fox} /* note */ in {snow}"]
    dynamic["nodes"][-1]["widgets_values"] = ["{x|y}"]
    return {"one_level": module.one_level(), "dynamic_prompt": dynamic, "nested": module.nested(), "bypassed_inside": bypassed_inside,
            "bypassed_instance": bypassed_instance, "nested_default_seed": unsaved_seed}


def test_the_frontend_flattens_the_unit_test_workflows_as_diffmesh_does(sub_server):
    registry = build_registry()
    results = {}
    with open_page(sub_server) as page:
        load(page, sub_server.url)
        for name, workflow in _unit_workflows().items():
            results[name] = (workflow, page.evaluate("""async ([workflow, name]) => {
                await window.app.loadGraphData(workflow, true, true, name);
                return JSON.parse(JSON.stringify(await window.app.graphToPrompt()));
            }""", [workflow, f"{name}.json"]))
        assert page.errors == []
    for name, (written, frontend) in results.items():
        queued = strip(frontend["output"])
        assert strip(ui_to_api(frontend["workflow"], registry)) == queued, name
        # as written: the page only adds diffmesh's optional `device` widget to the loader
        assert queued["4"]["inputs"].pop("device") == "default"
        assert strip(ui_to_api(written, registry)) == queued, name
    assert results["nested"][1]["output"]["20:7:3"]["inputs"]["seed"] == 99
    dynamic = results["dynamic_prompt"][1]["output"]
    assert dynamic["10:1"]["inputs"]["text"] == "a fox  in snow" and dynamic["9"]["inputs"]["filename_prefix"] == "{x|y}"
    assert not [k for k in results["bypassed_instance"][1]["output"] if ":" in k]
