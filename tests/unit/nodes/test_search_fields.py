"""/object_info carries current ComfyUI's node-library search fields for core nodes. The expected
values are copied by hand from ComfyUI's nodes.py and comfy_extras (July 2026)."""

from __future__ import annotations

import pytest

from diffmesh.config.paths import Paths
from diffmesh.nodes.base import NodeDef, NodeSchema, out
from diffmesh.nodes.registry import build_registry
from diffmesh.nodes.search_fields import with_search_fields


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    return build_registry().object_info(Paths.build(tmp_path_factory.mktemp("base")))


@pytest.mark.parametrize("name, aliases, category", [
    ("CLIPTextEncode", ["text", "prompt", "text prompt", "positive prompt", "negative prompt", "encode text",
                        "text encoder", "encode prompt"], None),
    ("ConditioningCombine", ["combine", "merge conditioning", "combine prompts", "merge prompts", "mix prompts",
                             "add prompt"], "Image Generation"),
    ("SaveImage", ["save", "save image", "export image", "output image", "write image", "download"], "Basics"),
    ("KSampler", ["sampler", "sample", "generate", "denoise", "diffuse", "txt2img", "img2img"], None),
])
def test_core_nodes_carry_comfyui_search_aliases_and_essentials_category(object_info, name, aliases, category):
    info = object_info[name]
    assert info["search_aliases"] == aliases
    assert info.get("essentials_category") == category
    assert list(info)[-1] == ("essentials_category" if category else "search_aliases")


def test_a_node_that_declares_its_own_fields_keeps_them():
    own = NodeDef(NodeSchema("SaveImage", "Save Image", "image", outputs=out(), search_aliases=("mine",)),
                  lambda ctx: ())
    assert with_search_fields(own).schema.search_aliases == ("mine",)
    assert with_search_fields(own).schema.essentials_category is None
    unknown = NodeDef(NodeSchema("NotAComfyNode", "x", "testing"), lambda ctx: ())
    assert with_search_fields(unknown) is unknown
