"""Every node's /object_info entry equals ComfyUI 0.8.0's (spec Appendix A), key order included."""

import json
from pathlib import Path

import pytest

from diffmesh.config.paths import Paths
from diffmesh.nodes.registry import build_registry
from diffmesh.nodes.search_fields import COMFY_SEARCH_FIELDS

def appendix_a(reference_dir: Path) -> dict:
    text = (reference_dir / "comfy-api-spec.md").read_text()
    block = text[text.index("## Appendix A"):]
    entries = {}
    for line in block.splitlines():
        if line.startswith('{"'):
            entries.update(json.loads(line))
    return entries


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    for folder, name in (("models/checkpoints", "v1-5-pruned-emaonly.safetensors"),
                         ("models/loras", "example_lora.safetensors"), ("input", "example.png")):
        (base / folder).mkdir(parents=True)
        (base / folder / name).write_bytes(b"")
    return build_registry().object_info(Paths.build(base), ["cpu"])


def without_device(entry: dict) -> dict:
    """diffmesh adds an optional `device` combo to loaders; ComfyUI workflows never set it."""
    entry = json.loads(json.dumps(entry))
    if "device" in entry["input"].get("optional", {}):
        del entry["input"]["optional"]["device"]
        entry["input_order"]["optional"].remove("device")
        if not entry["input"]["optional"]:
            del entry["input"]["optional"], entry["input_order"]["optional"]
    return entry


def with_newer_fields(entry: dict) -> dict:
    """ComfyUI 0.8.0's entry with the keys current ComfyUI's node_info adds, where it puts them:
    `is_input_list` after input_order, `has_intermediate_output` after output_node,
    `search_aliases` and `essentials_category` at the end, with current ComfyUI's values (none of
    the appendix nodes is dev-only)."""
    out = {}
    for key, value in entry.items():
        out[key] = value
        if key == "input_order":
            out["is_input_list"] = False
        elif key == "output_node":
            out["has_intermediate_output"] = False
    aliases, category = COMFY_SEARCH_FIELDS.get(entry["name"], ((), None))
    out["search_aliases"] = list(aliases)
    if category is not None:
        out["essentials_category"] = category
    return out


def test_every_appendix_a_node_matches_exactly(object_info, reference_dir):
    expected = appendix_a(reference_dir)
    assert len(expected) == 17
    for name, entry in expected.items():
        assert json.dumps(without_device(object_info[name])) == json.dumps(with_newer_fields(entry)), name


def test_loaders_offer_a_device_combo_with_the_engine_devices(object_info):
    assert object_info["CheckpointLoaderSimple"]["input"]["optional"]["device"][0] == ["default", "cpu"]
    assert object_info["VAELoader"]["input_order"] == {"required": ["vae_name"], "optional": ["device"]}


@pytest.mark.parametrize("name,display,category,inputs", [
    ("VAELoader", "Load VAE", "loaders", ["vae_name"]),
    ("LoraLoaderModelOnly", "LoraLoaderModelOnly", "loaders", ["model", "lora_name", "strength_model"]),
    ("ConditioningSetArea", "Conditioning (Set Area)", "conditioning",
     ["conditioning", "width", "height", "x", "y", "strength"]),
    ("VAEEncodeForInpaint", "VAE Encode (for Inpainting)", "latent/inpaint", ["pixels", "vae", "mask", "grow_mask_by"]),
    ("SetLatentNoiseMask", "Set Latent Noise Mask", "latent/inpaint", ["samples", "mask"]),
    ("ImageScaleBy", "Upscale Image By", "image/upscaling", ["image", "upscale_method", "scale_by"]),
    ("SaveLatent", "SaveLatent", "_for_testing", ["samples", "filename_prefix"]),
    ("LoadLatent", "LoadLatent", "_for_testing", ["latent"])])
def test_nodes_outside_appendix_a_follow_comfyui_0_8(object_info, name, display, category, inputs):
    entry = object_info[name]
    assert (entry["display_name"], entry["category"], entry["input_order"]["required"]) == (display, category, inputs)
    assert entry["python_module"] == "nodes"


def test_save_latent_defaults_and_hidden_inputs(object_info):
    entry = object_info["SaveLatent"]
    assert entry["input"]["required"]["filename_prefix"] == ["STRING", {"default": "latents/ComfyUI"}]
    assert entry["input"]["hidden"] == {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
    assert entry["output_node"] is True and entry["output"] == []
