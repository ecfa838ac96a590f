"""UI workflows with subgraphs convert to the API prompt the ComfyUI frontend (1.58) queues.

The expected prompts are written by hand from the frontend's rules (ExecutableNodeDTO /
graphToPrompt): inner ids `instance:inner`, links through the -10/-20 boundary nodes, promoted
widget values from the instance, muted/bypassed nodes inside handled as at the top level.
"""

from __future__ import annotations

import copy

import pytest

from diffmesh.errors import WorkflowError
from diffmesh.graph.workflow import ui_to_api
from diffmesh.nodes.registry import build_registry

SAMPLER = "5f3c1e2a-0000-4000-8000-00000000a001"      # subgraph: two prompts and a KSampler
OUTER = "5f3c1e2a-0000-4000-8000-00000000b002"        # subgraph: the sampler subgraph plus a VAEDecode


def node(id_, type_, inputs=(), outputs=(), widgets=None, mode=0, order=0, title=None):
    data = {"id": id_, "type": type_, "pos": [0, 0], "size": [100, 100], "flags": {}, "order": order, "mode": mode,
            "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs], "properties": {}}
    if widgets is not None:
        data["widgets_values"] = widgets
    if title:
        data["title"] = title
    return data


def link(id_, origin, origin_slot, target, target_slot, type_):
    return {"id": id_, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
            "target_slot": target_slot, "type": type_}


def sampler_definition():
    """inputs: model, clip (two targets), latent_image, seed (promoted widget); output: LATENT."""
    nodes = [
        node(1, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 2},
                                          {"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": None}],
             outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [6]}], widgets=["a red fox"]),
        node(2, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 3}],
             outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [7]}], widgets=["blurry"],
             title="Negative"),
        node(3, "KSampler", inputs=[{"name": "model", "type": "MODEL", "link": 1},
                                    {"name": "positive", "type": "CONDITIONING", "link": 6},
                                    {"name": "negative", "type": "CONDITIONING", "link": 7},
                                    {"name": "latent_image", "type": "LATENT", "link": 4},
                                    {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 5}],
             outputs=[{"name": "LATENT", "type": "LATENT", "links": [8]}],
             widgets=[1, "fixed", 3, 7.5, "euler", "normal", 1.0]),
    ]
    links = [link(1, -10, 0, 3, 0, "MODEL"), link(2, -10, 1, 1, 0, "CLIP"), link(3, -10, 1, 2, 0, "CLIP"),
             link(4, -10, 2, 3, 3, "LATENT"), link(5, -10, 3, 3, 4, "INT"), link(6, 1, 0, 3, 1, "CONDITIONING"),
             link(7, 2, 0, 3, 2, "CONDITIONING"), link(8, 3, 0, -20, 0, "LATENT")]
    return {"id": SAMPLER, "version": 1, "state": {}, "revision": 0, "config": {}, "name": "Sampler",
            "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]}, "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
            "inputs": [{"id": "i0", "name": "model", "type": "MODEL", "linkIds": [1]},
                       {"id": "i1", "name": "clip", "type": "CLIP", "linkIds": [2, 3]},
                       {"id": "i2", "name": "latent_image", "type": "LATENT", "linkIds": [4]},
                       {"id": "i3", "name": "seed", "type": "INT", "linkIds": [5]}],
            "outputs": [{"id": "o0", "name": "LATENT", "type": "LATENT", "linkIds": [8]}],
            "widgets": [], "nodes": nodes, "groups": [], "links": links, "extra": {}}


def sampler_instance(id_, links_in, link_out, seed=None, order=2):
    model, clip, latent = links_in
    return node(id_, SAMPLER, order=order,
                inputs=[{"name": "model", "type": "MODEL", "link": model}, {"name": "clip", "type": "CLIP", "link": clip},
                        {"name": "latent_image", "type": "LATENT", "link": latent},
                        {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}],
                outputs=[{"name": "LATENT", "type": "LATENT", "links": [link_out]}],
                widgets=None if seed is None else [seed])


def loaders():
    return [node(4, "CheckpointLoaderSimple", outputs=[{"name": "MODEL", "type": "MODEL", "links": [11]},
                                                       {"name": "CLIP", "type": "CLIP", "links": [12]},
                                                       {"name": "VAE", "type": "VAE", "links": [15]}],
                 widgets=["tiny-sd1.safetensors"], order=0),
            node(5, "EmptyLatentImage", outputs=[{"name": "LATENT", "type": "LATENT", "links": [13]}],
                 widgets=[64, 64, 1], order=1)]


def one_level(seed=42):
    """Top level: loaders -> sampler subgraph instance 10 -> VAEDecode 8 -> SaveImage 9."""
    nodes = loaders() + [
        sampler_instance(10, (11, 12, 13), 14, seed=seed),
        node(8, "VAEDecode", inputs=[{"name": "samples", "type": "LATENT", "link": 14},
                                     {"name": "vae", "type": "VAE", "link": 15}],
             outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [16]}], order=3),
        node(9, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 16}], widgets=["sg"], order=4)]
    links = [[11, 4, 0, 10, 0, "MODEL"], [12, 4, 1, 10, 1, "CLIP"], [13, 5, 0, 10, 2, "LATENT"],
             [14, 10, 0, 8, 0, "LATENT"], [15, 4, 2, 8, 1, "VAE"], [16, 8, 0, 9, 0, "IMAGE"]]
    return {"id": "wf", "revision": 0, "last_node_id": 10, "last_link_id": 16, "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4,
            "definitions": {"subgraphs": [sampler_definition()]}}


LOADERS = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
}


def sampler_nodes(prefix, model, clip, latent, seed):
    return {
        f"{prefix}:1": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": clip}},
        f"{prefix}:2": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": clip}},
        f"{prefix}:3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 3, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": model, "positive": [f"{prefix}:1", 0], "negative": [f"{prefix}:2", 0], "latent_image": latent}},
    }


@pytest.fixture(scope="module")
def registry():
    return build_registry()


def strip_meta(prompt):
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_inner_nodes_get_instance_ids_and_links_cross_the_boundary(registry):
    prompt = ui_to_api(one_level(), registry)
    expected = {**LOADERS, **sampler_nodes("10", ["4", 0], ["4", 1], ["5", 0], 42),
                "8": {"class_type": "VAEDecode", "inputs": {"samples": ["10:3", 0], "vae": ["4", 2]}},
                "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "sg", "images": ["8", 0]}}}
    assert strip_meta(prompt) == expected
    assert list(prompt)[:5] == ["4", "5", "10:1", "10:2", "10:3"]        # instance expanded in place
    assert prompt["10:2"]["_meta"] == {"title": "Negative"}
    assert prompt["10:1"]["_meta"] == {"title": "CLIP Text Encode (Prompt)"}


def test_promoted_widget_without_a_saved_value_keeps_the_inner_widget_value(registry):
    prompt = ui_to_api(one_level(seed=None), registry)
    assert prompt["10:3"]["inputs"]["seed"] == 1


def test_an_outer_link_into_a_promoted_input_wins_over_its_widget(registry):
    ui = one_level()
    ui["nodes"].append(node(30, "PrimitiveNode", outputs=[{"name": "INT", "type": "INT", "links": [30],
                                                          "widget": {"name": "seed"}}], widgets=[777, "fixed"]))
    ui["nodes"][2]["inputs"][3]["link"] = 30
    ui["links"].append([30, 30, 0, 10, 3, "INT"])
    assert ui_to_api(ui, registry)["10:3"]["inputs"]["seed"] == 777


def test_two_instances_of_one_definition_are_separate_nodes(registry):
    ui = one_level()
    ui["nodes"][1]["outputs"][0]["links"] = [13, 23]
    ui["nodes"].append(sampler_instance(20, (21, 22, 23), 24, seed=5, order=2))
    ui["nodes"].append(node(25, "VAEDecode", inputs=[{"name": "samples", "type": "LATENT", "link": 24},
                                                     {"name": "vae", "type": "VAE", "link": None}], order=5))
    ui["links"] += [[21, 4, 0, 20, 0, "MODEL"], [22, 4, 1, 20, 1, "CLIP"], [23, 5, 0, 20, 2, "LATENT"],
                    [24, 20, 0, 25, 0, "LATENT"]]
    prompt = strip_meta(ui_to_api(ui, registry))
    assert {k: v for k, v in prompt.items() if k.startswith("20:")} == sampler_nodes("20", ["4", 0], ["4", 1],
                                                                                      ["5", 0], 5)
    assert prompt["10:3"]["inputs"]["seed"] == 42 and prompt["25"]["inputs"] == {"samples": ["20:3", 0]}


def nested():
    """Top level holds instance 20 of OUTER; OUTER holds sampler instance 7 and VAEDecode 6.
    OUTER's inputs: model, clip, latent_image, vae, seed (promoted through instance 7); output IMAGE."""
    inner = [
        sampler_instance(7, (1, 2, 3), 9, seed=None),
        node(6, "VAEDecode", inputs=[{"name": "samples", "type": "LATENT", "link": 9},
                                     {"name": "vae", "type": "VAE", "link": 4}],
             outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [10]}]),
    ]
    inner[0]["inputs"][3]["link"] = 5
    links = [link(1, -10, 0, 7, 0, "MODEL"), link(2, -10, 1, 7, 1, "CLIP"), link(3, -10, 2, 7, 2, "LATENT"),
             link(4, -10, 3, 6, 1, "VAE"), link(5, -10, 4, 7, 3, "INT"), link(9, 7, 0, 6, 0, "LATENT"),
             link(10, 6, 0, -20, 0, "IMAGE")]
    outer = {"id": OUTER, "version": 1, "name": "Outer", "inputNode": {"id": -10, "bounding": [0, 0, 10, 10]},
             "outputNode": {"id": -20, "bounding": [0, 0, 10, 10]},
             "inputs": [{"id": "a", "name": "model", "type": "MODEL", "linkIds": [1]},
                        {"id": "b", "name": "clip", "type": "CLIP", "linkIds": [2]},
                        {"id": "c", "name": "latent_image", "type": "LATENT", "linkIds": [3]},
                        {"id": "d", "name": "vae", "type": "VAE", "linkIds": [4]},
                        {"id": "e", "name": "seed", "type": "INT", "linkIds": [5]}],
             "outputs": [{"id": "f", "name": "IMAGE", "type": "IMAGE", "linkIds": [10]}],
             "nodes": inner, "links": links}
    top = loaders() + [
        node(20, OUTER, order=2, widgets=[99],
             inputs=[{"name": "model", "type": "MODEL", "link": 11}, {"name": "clip", "type": "CLIP", "link": 12},
                     {"name": "latent_image", "type": "LATENT", "link": 13}, {"name": "vae", "type": "VAE", "link": 15},
                     {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None}],
             outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [16]}]),
        node(9, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": 16}], widgets=["nested"], order=3)]
    top_links = [[11, 4, 0, 20, 0, "MODEL"], [12, 4, 1, 20, 1, "CLIP"], [13, 5, 0, 20, 2, "LATENT"],
                 [15, 4, 2, 20, 3, "VAE"], [16, 20, 0, 9, 0, "IMAGE"]]
    return {"id": "wf2", "revision": 0, "nodes": top, "links": top_links, "version": 0.4,
            "definitions": {"subgraphs": [sampler_definition(), outer]}}


def test_nested_subgraphs_get_three_part_ids_and_promote_through_both_levels(registry):
    prompt = strip_meta(ui_to_api(nested(), registry))
    expected = {**LOADERS, **sampler_nodes("20:7", ["4", 0], ["4", 1], ["5", 0], 99),
                "20:6": {"class_type": "VAEDecode", "inputs": {"samples": ["20:7:3", 0], "vae": ["4", 2]}},
                "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "nested", "images": ["20:6", 0]}}}
    assert prompt == expected


def test_nested_promoted_input_without_values_falls_back_to_the_innermost_widget(registry):
    ui = nested()
    del ui["nodes"][2]["widgets_values"]
    assert ui_to_api(ui, registry)["20:7:3"]["inputs"]["seed"] == 1


def test_bypassed_and_muted_nodes_inside_a_subgraph(registry):
    ui = one_level()
    sub = ui["definitions"]["subgraphs"][0]
    # A bypassed LatentUpscaleBy between KSampler and the output boundary, and a muted SaveImage.
    sub["nodes"].append(node(4, "LatentUpscaleBy", mode=4, widgets=["nearest-exact", 1.5],
                             inputs=[{"name": "samples", "type": "LATENT", "link": 8}],
                             outputs=[{"name": "LATENT", "type": "LATENT", "links": [9]}]))
    sub["nodes"].append(node(5, "SaveImage", mode=2, widgets=["muted"],
                             inputs=[{"name": "images", "type": "IMAGE", "link": None}]))
    sub["links"][7] = link(8, 3, 0, 4, 0, "LATENT")
    sub["links"].append(link(9, 4, 0, -20, 0, "LATENT"))
    sub["outputs"][0]["linkIds"] = [9]
    prompt = ui_to_api(ui, registry)
    assert "10:4" not in prompt and "10:5" not in prompt
    assert prompt["8"]["inputs"]["samples"] == ["10:3", 0]


def test_a_muted_inner_node_drops_the_links_to_it(registry):
    ui = one_level()
    ui["definitions"]["subgraphs"][0]["nodes"][2]["mode"] = 2       # the KSampler inside
    prompt = ui_to_api(ui, registry)
    assert "10:3" not in prompt and "samples" not in prompt["8"]["inputs"]
    assert "10:1" in prompt


@pytest.mark.parametrize("mode", [2, 4])
def test_a_muted_or_bypassed_instance_emits_none_of_its_nodes(registry, mode):
    ui = one_level()
    ui["nodes"][2]["mode"] = mode
    prompt = ui_to_api(ui, registry)
    assert not [k for k in prompt if k.startswith("10:")]
    # bypassed: VAEDecode's LATENT comes from the instance's LATENT input (EmptyLatentImage); muted: dropped
    assert prompt["8"]["inputs"].get("samples") == (["5", 0] if mode == 4 else None)


def test_an_input_wired_straight_to_an_output_passes_through(registry):
    ui = one_level()
    sub = ui["definitions"]["subgraphs"][0]
    sub["links"].append(link(20, -10, 2, -20, 0, "LATENT"))
    sub["outputs"][0]["linkIds"] = [20]
    assert ui_to_api(ui, registry)["8"]["inputs"]["samples"] == ["5", 0]


def test_a_subgraph_that_contains_itself_is_refused(registry):
    ui = one_level()
    sub = ui["definitions"]["subgraphs"][0]
    sub["nodes"].append(node(9, SAMPLER, inputs=[], outputs=[]))
    with pytest.raises(WorkflowError, match="nests itself"):
        ui_to_api(ui, registry)


def test_reroute_and_primitive_inside_a_subgraph(registry):
    ui = one_level()
    sub = ui["definitions"]["subgraphs"][0]
    sub["nodes"].append(node(11, "PrimitiveNode", widgets=[12, "fixed"],
                             outputs=[{"name": "INT", "type": "INT", "links": [31], "widget": {"name": "steps"}}]))
    sub["nodes"][2]["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 31})
    sub["links"].append(link(31, 11, 0, 3, 5, "INT"))
    sub["nodes"].append(node(12, "Reroute", inputs=[{"name": "", "type": "*", "link": 32}],
                             outputs=[{"name": "", "type": "CONDITIONING", "links": [33]}]))
    sub["links"][6] = link(7, 2, 0, 12, 0, "CONDITIONING")
    sub["links"].append(link(32, 2, 0, 12, 0, "CONDITIONING"))
    sub["links"].append(link(33, 12, 0, 3, 2, "CONDITIONING"))
    sub["nodes"][2]["inputs"][2]["link"] = 33
    sub["nodes"][1]["outputs"][0]["links"] = [32]
    prompt = ui_to_api(ui, registry)
    assert prompt["10:3"]["inputs"]["steps"] == 12 and prompt["10:3"]["inputs"]["negative"] == ["10:2", 0]
    assert "10:11" not in prompt and "10:12" not in prompt


def test_subgraph_workflow_is_not_changed_by_conversion(registry):
    ui = nested()
    before = copy.deepcopy(ui)
    ui_to_api(ui, registry)
    assert ui == before


def test_boundary_slots_without_link_ids_are_found_from_the_links(registry):
    ui = nested()
    for definition in ui["definitions"]["subgraphs"]:
        for slot in definition["inputs"] + definition["outputs"]:
            del slot["linkIds"]
    assert ui_to_api(ui, registry) == ui_to_api(nested(), registry)
    assert ui_to_api(ui, registry)["20:7:3"]["inputs"]["seed"] == 99


def test_saved_instance_without_its_unlinked_promoted_input_keeps_the_value(registry):
    # The frontend saves workflows with unlinked widget inputs left out (compressWidgetInputSlots)
    # and rebuilds an instance's inputs from its definition's slots when it loads them.
    ui = one_level(seed=42)
    del ui["nodes"][2]["inputs"][3]
    assert ui_to_api(ui, registry)["10:3"]["inputs"]["seed"] == 42
