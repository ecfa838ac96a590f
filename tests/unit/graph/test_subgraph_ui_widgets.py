"""The UI converter's widget rules beyond subgraphs: `{a|b}` dynamic prompts (frontend
processDynamicPrompt, only on `dynamicPrompts: true` widgets), widgets converted to sockets in
old and new workflows, `_meta` registry ids. Expected values are worked out by hand."""

from __future__ import annotations

import random

import pytest

from diffmesh.graph.dynamic_prompts import expand
from diffmesh.graph.workflow import ui_to_api
from diffmesh.nodes.base import NodeDef, NodeSchema, inp, out
from diffmesh.nodes.registry import build_registry


class PickIndex(random.Random):
    """Picks option `index` (clamped) of every choice, so expected texts can be written by hand."""

    def __init__(self, index):
        super().__init__(0)
        self.index = index
        self.seen = []

    def choice(self, seq):
        self.seen.append(list(seq))
        return seq[min(self.index, len(seq) - 1)]


@pytest.mark.parametrize("text, index, expected", [
    ("a {red|blue} fox", 0, "a red fox"),
    ("a {red|blue} fox", 1, "a blue fox"),
    ("{a|{b|c}} x", 1, "c x"),                            # nested: the picked option is expanded again
    ("keep \\{this|that\\} literal", 0, "keep {this|that} literal"),
    ("path C:\\\\dir \\n", 0, "path C:\\\\dir \\n"),       # other escapes stay as written
    ("fox /* a {x|y} comment */ in {snow|rain}", 1, "fox  in rain"),
    ("fox // trailing {x|y}\nnext {p|q}", 0, "fox \nnext p"),
    ("unclosed {a|b", 1, "unclosed b"),
    ("empty {} and {|z}", 0, "empty  and "),
])
def test_dynamic_prompt_rules(text, index, expected):
    assert expand(text, PickIndex(index)) == expected


def test_dynamic_prompt_choice_is_uniform_over_options():
    rng = random.Random(1234)
    picks = [expand("{a|b|c}", rng) for _ in range(3000)]
    assert {p: picks.count(p) for p in "abc"} == pytest.approx({"a": 1000, "b": 1000, "c": 1000}, abs=120)


@pytest.fixture(scope="module")
def registry():
    def _noop(ctx, **kwargs):
        return (0,)

    toy = NodeDef(NodeSchema("ToyForcedCount", "Toy Forced Count", "testing",
                             inputs=(inp("count", "INT", forceInput=True, default=0), inp("label", "STRING", default=""),
                                     inp("scale", "FLOAT", default=1.0)),
                             outputs=out("INT")), _noop)
    return build_registry(extra=[toy])


def node(id_, type_, inputs=(), outputs=(), widgets=None, mode=0, order=0, properties=None):
    data = {"id": id_, "type": type_, "order": order, "mode": mode, "inputs": [dict(i) for i in inputs],
            "outputs": [dict(o) for o in outputs], "properties": properties or {}}
    if widgets is not None:
        data["widgets_values"] = widgets
    return data


def text_graph(text, prefix="{x|y}"):
    nodes = [node(1, "CheckpointLoaderSimple", widgets=["m.safetensors"],
                  outputs=[{"name": "MODEL", "type": "MODEL", "links": []}, {"name": "CLIP", "type": "CLIP", "links": [1]},
                           {"name": "VAE", "type": "VAE", "links": []}]),
             node(2, "CLIPTextEncode", inputs=[{"name": "clip", "type": "CLIP", "link": 1}], widgets=[text], order=1,
                  properties={"cnr_id": "comfy-core", "ver": "0.3.64", "Node name for S&R": "CLIPTextEncode"}),
             node(3, "SaveImage", inputs=[{"name": "images", "type": "IMAGE", "link": None}], widgets=[prefix], order=2)]
    return {"nodes": nodes, "links": [[1, 1, 1, 2, 0, "CLIP"]], "version": 0.4}


def test_dynamic_prompts_expand_only_on_widgets_that_ask_for_it(registry):
    prompt = ui_to_api(text_graph("a {cat|dog} on a {mat|rug}"), registry, rng=PickIndex(1))
    assert prompt["2"]["inputs"]["text"] == "a dog on a rug"
    assert prompt["3"]["inputs"]["filename_prefix"] == "{x|y}"          # SaveImage has no dynamicPrompts


def test_dynamic_prompts_from_a_primitive_node_are_expanded_too(registry):
    ui = text_graph("unused")
    ui["nodes"].append(node(4, "PrimitiveNode", widgets=["{sun|moon}"],
                            outputs=[{"name": "STRING", "type": "STRING", "links": [2], "widget": {"name": "text"}}]))
    ui["nodes"][1]["inputs"].append({"name": "text", "type": "STRING", "widget": {"name": "text"}, "link": 2})
    ui["links"].append([2, 4, 0, 2, 1, "STRING"])
    assert ui_to_api(ui, registry, rng=PickIndex(0))["2"]["inputs"]["text"] == "sun"


def test_meta_carries_the_node_pack_ids_the_workflow_saved(registry):
    prompt = ui_to_api(text_graph("x"), registry)
    assert prompt["2"]["_meta"] == {"title": "CLIP Text Encode (Prompt)", "cnr_id": "comfy-core", "ver": "0.3.64"}
    assert prompt["3"]["_meta"] == {"title": "Save Image"}


def sampler_graph(seed_socket, widgets):
    nodes = [node(5, "KSampler", widgets=widgets,
                  inputs=[{"name": "model", "type": "MODEL", "link": None}, seed_socket]),
             node(6, "ToyForcedCount", outputs=[{"name": "INT", "type": "INT", "links": [7]}], widgets=["", 1.0])]
    return {"nodes": nodes, "links": [[7, 6, 0, 5, 1, "INT"]], "version": 0.4}


def test_widget_converted_to_a_linked_socket_takes_the_link_and_keeps_widget_positions(registry):
    # Old frontends kept a converted widget's value in widgets_values; the link wins, the rest line up.
    ui = sampler_graph({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 7},
                       [123, "randomize", 4, 6.5, "dpmpp_2m", "karras", 0.8])
    inputs = ui_to_api(ui, registry)["5"]["inputs"]
    assert inputs == {"seed": ["6", 0], "steps": 4, "cfg": 6.5, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                      "denoise": 0.8}


def test_widget_socket_without_a_link_keeps_its_widget_value(registry):
    ui = sampler_graph({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": None},
                       [123, "fixed", 4, 6.5, "dpmpp_2m", "karras", 0.8])
    assert ui_to_api(ui, registry)["5"]["inputs"]["seed"] == 123


def test_force_input_widget_values_of_old_frontends_keep_the_others_in_place(registry):
    # Before the widget-socket rework a forceInput INT got a widget converted to a socket at once:
    # its value sits first in widgets_values, the socket carries a `widget` field, and that
    # frontend queued the hidden widget's value; the other values keep their names.
    old = {"nodes": [node(6, "ToyForcedCount", widgets=[5, "old label", 2.5],
                          inputs=[{"name": "count", "type": "INT", "widget": {"name": "count"}, "link": None}])],
           "links": [], "version": 0.4}
    assert ui_to_api(old, registry)["6"]["inputs"] == {"count": 5, "label": "old label", "scale": 2.5}
    new = {"nodes": [node(6, "ToyForcedCount", widgets=["new label", 3.5],
                          inputs=[{"name": "count", "type": "INT", "link": None}])],
           "links": [], "version": 0.4}
    assert ui_to_api(new, registry)["6"]["inputs"] == {"label": "new label", "scale": 3.5}
