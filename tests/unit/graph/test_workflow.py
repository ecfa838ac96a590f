import copy
import json

import pytest

from diffmesh.errors import WorkflowError
from diffmesh.graph.workflow import detect_format, load_workflow, ui_to_api, widget_names
from diffmesh.nodes.registry import build_registry

EXPECTED_DEFAULT = {
    "3": {"class_type": "KSampler",
          "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8.0, "sampler_name": "euler", "scheduler": "normal",
                     "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                     "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "v1-5-pruned-emaonly-fp16.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["4", 1]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
}


def node(id_, type_, inputs=(), outputs=(), widgets=None, mode=0, order=0, title=None):
    data = {"id": id_, "type": type_, "pos": [0, 0], "size": [100, 100], "flags": {}, "order": order, "mode": mode,
            "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], "properties": {}}
    if widgets is not None:
        data["widgets_values"] = widgets
    if title:
        data["title"] = title
    return data


def default_graph():
    nodes = [
        node(4, "CheckpointLoaderSimple", outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]},
                                                  {"name": "CLIP", "type": "CLIP", "links": [3, 5]},
                                                  {"name": "VAE", "type": "VAE", "links": [8]}],
             widgets=["v1-5-pruned-emaonly-fp16.safetensors"], order=0),
        node(5, "EmptyLatentImage", outputs=[{"name": "LATENT", "type": "LATENT", "links": [2]}],
             widgets=[512, 512, 1], order=1),
        node(6, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 3}],
             outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}], widgets=["beautiful scenery"],
             order=2),
        node(7, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 5}],
             outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6]}], widgets=["text, watermark"],
             order=3),
        node(3, "KSampler", inputs=[{"name": "model", "type": "MODEL", "link": 1},
                                    {"name": "positive", "type": "CONDITIONING", "link": 4},
                                    {"name": "negative", "type": "CONDITIONING", "link": 6},
                                    {"name": "latent_image", "type": "LATENT", "link": 2}],
             outputs=[{"name": "LATENT", "type": "LATENT", "links": [7]}],
             widgets=[156680208700286, "randomize", 20, 8, "euler", "normal", 1], order=4),
        node(8, "VAEDecode", inputs=[{"name": "samples", "type": "LATENT", "link": 7},
                                     {"name": "vae", "type": "VAE", "link": 8}],
             outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [9]}], order=5),
        node(9, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 9}], widgets=["ComfyUI"], order=6),
    ]
    links = [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
             [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"],
             [7, 3, 0, 8, 0, "LATENT"], [8, 4, 2, 8, 1, "VAE"], [9, 8, 0, 9, 0, "IMAGE"]]
    return {"id": "x", "revision": 0, "last_node_id": 9, "last_link_id": 9, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_default_graph_converts_to_the_api_example(registry):
    prompt = ui_to_api(default_graph(), registry)
    assert strip_meta(prompt) == EXPECTED_DEFAULT
    assert prompt["3"]["_meta"] == {"title": "KSampler"}
    assert prompt["4"]["_meta"] == {"title": "Load Checkpoint"}


def test_missing_widget_values_take_the_spec_default(registry):
    ui = default_graph()
    del ui["nodes"][6]["widgets_values"]
    ui["nodes"][1]["widgets_values"] = [640]
    prompt = ui_to_api(ui, registry)
    assert prompt["9"]["inputs"]["filename_prefix"] == "ComfyUI"
    assert prompt["5"]["inputs"] == {"width": 640, "height": 512, "batch_size": 1}


def test_muted_node_is_dropped_with_links_to_it(registry):
    ui = default_graph()
    ui["nodes"][5]["mode"] = 2                       # VAEDecode muted
    prompt = ui_to_api(ui, registry)
    assert "8" not in prompt and "images" not in prompt["9"]["inputs"]


def test_bypassed_node_passes_its_matching_input_through(registry):
    ui = default_graph()
    # Insert a LatentUpscaleBy between KSampler and VAEDecode, then bypass it.
    ui["nodes"].append(node(10, "LatentUpscaleBy", inputs=[{"name": "samples", "type": "LATENT", "link": 7}],
                            outputs=[{"name": "LATENT", "type": "LATENT", "links": [10]}],
                            widgets=["nearest-exact", 1.5], mode=4, order=5))
    ui["links"][6] = [7, 3, 0, 10, 0, "LATENT"]
    ui["links"].append([10, 10, 0, 8, 0, "LATENT"])
    ui["nodes"][5]["inputs"][0]["link"] = 10
    prompt = ui_to_api(ui, registry)
    assert "10" not in prompt
    assert prompt["8"]["inputs"]["samples"] == ["3", 0]


def test_reroute_is_followed_to_its_origin(registry):
    ui = default_graph()
    ui["nodes"].append(node(11, "Reroute", inputs=[{"name": "", "type": "*", "link": 8}],
                            outputs=[{"name": "", "type": "VAE", "links": [11]}]))
    ui["links"][7] = [8, 4, 2, 11, 0, "VAE"]
    ui["links"].append([11, 11, 0, 8, 1, "VAE"])
    ui["nodes"][5]["inputs"][1]["link"] = 11
    prompt = ui_to_api(ui, registry)
    assert "11" not in prompt and prompt["8"]["inputs"]["vae"] == ["4", 2]


def test_primitive_node_value_replaces_the_link(registry):
    ui = default_graph()
    ui["nodes"].append(node(12, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [12],
                                                            "widget": {"name": "steps"}}], widgets=[33, "fixed"]))
    ui["nodes"][4]["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 12})
    ui["links"].append([12, 12, 0, 3, 4, "INT"])
    prompt = ui_to_api(ui, registry)
    assert prompt["3"]["inputs"]["steps"] == 33 and "12" not in prompt


def test_notes_are_not_emitted(registry):
    ui = default_graph()
    ui["nodes"].append(node(13, "Note", widgets=["hello"]))
    assert "13" not in ui_to_api(ui, registry)


def test_widget_order_includes_control_and_upload_extras(registry):
    assert widget_names(list(registry["KSamplerAdvanced"].schema.inputs)) == [
        "add_noise", "noise_seed", None, "steps", "cfg", "sampler_name", "scheduler", "start_at_step", "end_at_step",
        "return_with_leftover_noise"]
    assert widget_names(list(registry["LoadImage"].schema.inputs)) == ["image", None]


def test_detect_format_and_load(tmp_path, registry):
    api = tmp_path / "api.json"
    api.write_text(json.dumps(EXPECTED_DEFAULT))
    assert load_workflow(api, registry, None) == (EXPECTED_DEFAULT, {})
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps(default_graph()))
    prompt, extra = load_workflow(ui, registry, None)
    assert strip_meta(prompt) == EXPECTED_DEFAULT and extra["extra_pnginfo"]["workflow"]["id"] == "x"
    assert detect_format(copy.deepcopy(default_graph())) == "ui"
    with pytest.raises(WorkflowError):
        detect_format({"a": 1})
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(WorkflowError, match="not valid JSON"):
        load_workflow(bad, registry, None)
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow(tmp_path / "missing.json", registry, None)
