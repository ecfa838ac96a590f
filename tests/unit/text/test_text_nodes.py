"""CLIPLoader, DualCLIPLoader and CLIPTextEncodeFlux: ComfyUI's schemas, validation of every type,
run-time errors that name the type and file, and encoding through the real engine (in-process CPU
worker, memory manager) with CLIPTextEncode."""

from __future__ import annotations

import argparse

import pytest
import torch

from diffmesh.graph.validate import validate_prompt
from diffmesh.models.text.load import CLIP_TYPES, DUAL_CLIP_TYPES
from diffmesh.models.text.testfiles import TINY
from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, inp
from diffmesh.nodes.registry import build_registry
from diffmesh.runtime import Runtime

CLIP_L, T5, QWEN3, QWEN25 = ("tiny-clip_l.safetensors", "tiny-t5xxl.safetensors", "tiny-qwen_3_4b.safetensors",
                             "tiny-qwen_2.5_vl_7b.safetensors")


@pytest.fixture(scope="module")
def runtime(te_base, tmp_path_factory):
    ns = argparse.Namespace(base_directory=str(tmp_path_factory.mktemp("base")), models_dir=str(te_base / "models"),
                            cpu=True)
    rt = Runtime.build(ns)
    yield rt
    rt.close()


def ctx(runtime) -> NodeContext:
    return NodeContext(engine=runtime.engine, paths=runtime.paths, node_id="1", prompt={}, extra_data={}, state={})


def node(runtime, name):
    return runtime.registry[name].execute


def encode(runtime, clip, text):
    return node(runtime, "CLIPTextEncode")(ctx(runtime), text=text, clip=clip)[0]


# -- schemas ------------------------------------------------------------------------------------------

def test_schemas_are_comfyuis(runtime):
    info = runtime.registry.object_info(runtime.paths)
    loader = info["CLIPLoader"]
    assert loader["input"]["required"]["type"] == [list(CLIP_TYPES)]
    assert loader["input"]["optional"]["device"] == [["default", "cpu"], {"advanced": True}]
    assert loader["input_order"] == {"required": ["clip_name", "type"], "optional": ["device"]}
    assert (loader["display_name"], loader["category"], loader["output"]) == ("Load CLIP", "advanced/loaders", ["CLIP"])
    dual = info["DualCLIPLoader"]
    assert dual["input"]["required"]["type"] == [list(DUAL_CLIP_TYPES)] and "flux" in DUAL_CLIP_TYPES
    assert dual["input_order"]["required"] == ["clip_name1", "clip_name2", "type"]
    flux = info["CLIPTextEncodeFlux"]
    assert flux["input"]["required"] == {
        "clip": ["CLIP"], "clip_l": ["STRING", {"multiline": True, "dynamicPrompts": True}],
        "t5xxl": ["STRING", {"multiline": True, "dynamicPrompts": True}],
        "guidance": ["FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1}]}
    assert (flux["category"], flux["python_module"]) == ("advanced/conditioning/flux", "comfy_extras.nodes_flux")
    assert {"lumina2", "qwen_image", "stable_diffusion", "wan", "flux2"} <= set(CLIP_TYPES) and len(CLIP_TYPES) == 29


def test_text_encoders_are_listed_from_text_encoders_and_the_legacy_clip_folder(runtime):
    names = runtime.registry.object_info(runtime.paths)["CLIPLoader"]["input"]["required"]["clip_name"][0]
    assert {CLIP_L, T5, QWEN3, QWEN25} <= set(names)      # QWEN25 lives in models/clip/


SHOW = NodeDef(NodeSchema(name="ShowConditioning", display_name="Show", category="test",
                          inputs=(inp("conditioning", "CONDITIONING"),), output_node=True), lambda ctx, **kw: ())


@pytest.mark.parametrize("loader, types", [("CLIPLoader", CLIP_TYPES), ("DualCLIPLoader", DUAL_CLIP_TYPES)])
def test_every_comfyui_type_validates_and_others_do_not(runtime, loader, types):
    registry = build_registry([SHOW])
    files = {"clip_name": QWEN3} if loader == "CLIPLoader" else {"clip_name1": CLIP_L, "clip_name2": T5}

    def prompt(clip_type):
        return {"1": {"class_type": loader, "inputs": {**files, "type": clip_type}},
                "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 0]}},
                "3": {"class_type": "ShowConditioning", "inputs": {"conditioning": ["2", 0]}}}

    for clip_type in types:
        ok, error, _outputs, node_errors = validate_prompt(prompt(clip_type), registry, runtime.paths)
        assert ok, (clip_type, error, node_errors)
    ok, _error, _outputs, node_errors = validate_prompt(prompt("not_a_type"), registry, runtime.paths)
    assert not ok and node_errors["1"]["errors"][0]["type"] == "value_not_in_list"


# -- run-time checks ----------------------------------------------------------------------------------

@pytest.mark.parametrize("clip_type", ["ltxv", "sd3", "flux2", "hidream"])
def test_types_diffmesh_does_not_run_fail_with_the_type_and_the_supported_ones(runtime, clip_type):
    with pytest.raises(ValueError) as err:
        node(runtime, "CLIPLoader")(ctx(runtime), clip_name=QWEN3, type=clip_type)
    text = str(err.value)
    assert repr(clip_type) in text and "CLIPLoader" in text
    assert "lumina2" in text and "qwen_image" in text and "stable_diffusion" in text


def test_dual_loader_types_other_than_flux_fail_naming_flux(runtime):
    with pytest.raises(ValueError, match=r"'sdxl'.*flux"):
        node(runtime, "DualCLIPLoader")(ctx(runtime), clip_name1=CLIP_L, clip_name2=T5, type="sdxl")


def test_a_file_that_does_not_fit_the_type_names_the_file_and_what_it_holds(runtime):
    with pytest.raises(ValueError) as err:
        node(runtime, "CLIPLoader")(ctx(runtime), clip_name=T5, type="lumina2")
    text = str(err.value)
    assert T5 in text and "T5-XXL" in text and "Qwen3" in text
    with pytest.raises(ValueError, match="these files fit type 'lumina2'"):
        node(runtime, "CLIPLoader")(ctx(runtime), clip_name=QWEN3, type="stable_diffusion")
    with pytest.raises(ValueError, match="Qwen2.5"):
        node(runtime, "DualCLIPLoader")(ctx(runtime), clip_name1=CLIP_L, clip_name2=QWEN25, type="flux")


def test_device_input_places_the_text_encoder(runtime):
    (clip,) = node(runtime, "CLIPLoader")(ctx(runtime), clip_name=QWEN3, type="lumina2", device="cpu")
    (default,) = node(runtime, "CLIPLoader")(ctx(runtime), clip_name=QWEN3, type="lumina2")
    assert clip.device == "cpu" and default.device is None and clip.family == "lumina2"


# -- encoding through the engine -----------------------------------------------------------------------

def test_clip_text_encode_with_each_loader_type(runtime):
    load, dual = node(runtime, "CLIPLoader"), node(runtime, "DualCLIPLoader")
    (zimage,) = load(ctx(runtime), clip_name=QWEN3, type="lumina2")
    (qwen,) = load(ctx(runtime), clip_name=QWEN25, type="qwen_image")
    (sd,) = load(ctx(runtime), clip_name=CLIP_L, type="stable_diffusion")
    (flux,) = dual(ctx(runtime), clip_name1=CLIP_L, clip_name2=T5, type="flux")
    [[z, z_opts]] = encode(runtime, zimage, "a photo of a cat")
    [[q, q_opts]] = encode(runtime, qwen, "a photo of a cat")
    [[s, s_opts]] = encode(runtime, sd, "a photo of a cat")
    [[f, f_opts]] = encode(runtime, flux, "a photo of a cat")
    width = {name: dims.get("hidden", dims.get("d_model")) for name, dims in TINY.items()}
    assert z.shape == (1, 13, width["qwen3_4b"])
    assert torch.equal(z_opts["attention_mask"], torch.ones(1, 13, dtype=torch.long))
    assert q.shape == (1, 10, width["qwen25_7b"]) and q_opts == {"pooled_output": None}
    assert s.shape == (1, 77, width["clip_l"]) and s_opts["pooled_output"].shape == (1, width["clip_l"])
    assert f.shape == (1, 256, width["t5xxl"]) and f_opts["pooled_output"].shape == (1, width["clip_l"])
    assert "guidance" not in f_opts


def test_dual_clip_loader_takes_its_files_in_either_order(runtime):
    dual = node(runtime, "DualCLIPLoader")
    (a,) = dual(ctx(runtime), clip_name1=CLIP_L, clip_name2=T5, type="flux")
    (b,) = dual(ctx(runtime), clip_name1=T5, clip_name2=CLIP_L, type="flux")
    assert a.extra_paths and b.extra_paths and a.path != b.path
    [[ca, oa]] = encode(runtime, a, "(red:1.2) fox, 8k")
    [[cb, ob]] = encode(runtime, b, "(red:1.2) fox, 8k")
    assert torch.equal(ca, cb) and torch.equal(oa["pooled_output"], ob["pooled_output"])


def test_clip_text_encode_flux_adds_guidance_and_encodes_each_text_with_its_encoder(runtime):
    (flux,) = node(runtime, "DualCLIPLoader")(ctx(runtime), clip_name1=CLIP_L, clip_name2=T5, type="flux")
    (cond,) = node(runtime, "CLIPTextEncodeFlux")(ctx(runtime), clip=flux, clip_l="a dog", t5xxl="a photo of a cat",
                                                   guidance=2.5)
    [[seq, options]] = cond
    [[seq_cat, _]] = encode(runtime, flux, "a photo of a cat")
    [[_seq, dog]] = encode(runtime, flux, "a dog")
    assert options["guidance"] == 2.5
    assert torch.equal(seq, seq_cat) and torch.equal(options["pooled_output"], dog["pooled_output"])


def test_clip_text_encode_flux_refuses_a_clip_of_another_family(runtime):
    (zimage,) = node(runtime, "CLIPLoader")(ctx(runtime), clip_name=QWEN3, type="lumina2")
    with pytest.raises(ValueError, match="lumina2.*CLIPTextEncode"):
        node(runtime, "CLIPTextEncodeFlux")(ctx(runtime), clip=zimage, clip_l="a", t5xxl="a", guidance=3.5)


def test_make_test_model_writes_each_text_encoder_layout(tmp_path):
    from diffmesh.cli import main
    from diffmesh.models.detect import read_shapes
    from diffmesh.models.text.files import find_encoders

    expected = {"clip_l": "clip_l", "t5xxl": "t5xxl", "qwen3_4b": "qwen3", "qwen25_7b": "qwen25"}
    for family, kind in expected.items():
        out = tmp_path / f"{family}.safetensors"
        assert main(["make-test-model", "--family", family, "--out", str(out)]) == 0
        shapes = read_shapes(out)
        assert [f.kind for f in find_encoders(shapes)] == [kind]
    shapes = read_shapes(tmp_path / "qwen3_4b.safetensors")
    assert "model.embed_tokens.weight" in shapes and "model.norm.weight" in shapes
    assert "shared.weight" in read_shapes(tmp_path / "t5xxl.safetensors")
