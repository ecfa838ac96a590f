"""Vision conditioning nodes through the real runtime (in-process CPU worker) on tiny random files:
CLIPVisionLoader -> CLIPVisionEncode on a loaded image, StyleModelLoader -> StyleModelApply (Flux Redux)
on a tiny Flux workflow that samples and decodes, unCLIPConditioning's data and a tiny SD2.1 unCLIP
checkpoint sampled with it (unCLIPCheckpointLoader's four outputs), SDXL Revision, GLIGENTextBoxApply's box
entries and sampling with them (GLIGEN's fusers in the tiny SD1 UNet), and the /object_info
schemas of ComfyUI's nodes.py for each node."""

import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffmesh.models.testmodels import make_test_model
from diffmesh.models.testmodels_vision import clip_vision_state_dict, save, write_tiny_vision_models
from diffmesh.runtime import Runtime


@pytest.fixture(scope="module")
def runtime(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("vision-nodes")
    models = base / "models"
    for folder, name in (("diffusion_models", "tiny-flux-dev.safetensors"), ("vae", "tiny-flux-ae.safetensors"),
                         ("checkpoints", "tiny-sd1.safetensors"), ("checkpoints", "tiny-sdxl.safetensors")):
        (models / folder).mkdir(parents=True, exist_ok=True)
        os.link(models_base / "models" / folder / name, models / folder / name)
    make_test_model("clip_l", "tiny", models / "text_encoders" / "tiny-clip-l.safetensors")
    make_test_model("t5xxl", "tiny", models / "text_encoders" / "tiny-t5xxl.safetensors")
    write_tiny_vision_models(models)
    # a bigG whose image embedding is the tiny SDXL's pooled width (SDXL Revision)
    save(clip_vision_state_dict("vit_g", projection=64), models / "clip_vision" / "tiny_vit_g_revision.safetensors")
    (base / "input").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(base / "input" / "photo.png")
    rt = Runtime.build(argparse.Namespace(base_directory=str(base), models_dir=str(models), cpu=True))
    yield rt
    rt.close()


def run(runtime, prompt, node, slot=0):
    """Run what `node` needs (as a partial execution would) and return its output."""
    result = runtime.executor.execute(prompt, "t", {}, None, outputs_to_execute=[node])
    assert result.status == "success", result.error or result.validation_error or result.node_errors
    return runtime.executor.cache.get(node).outputs[slot][0]


def vision(clip_name="tiny_siglip.safetensors", crop="center") -> dict:
    return {"20": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
            "21": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": clip_name}},
            "22": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["21", 0], "image": ["20", 0],
                                                                "crop": crop}}}


def flux(style: dict | None = None) -> dict:
    wf = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "tiny-clip-l.safetensors",
                                                         "clip_name2": "tiny-t5xxl.safetensors", "type": "flux"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 0], "text": "a red fox"}},
        "4": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["3", 0], "guidance": 3.5}},
        "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 42, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-flux-ae.safetensors"}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
    }
    if style is not None:
        wf.update(vision())
        wf["23"] = {"class_type": "StyleModelLoader", "inputs": {"style_model_name": "tiny_redux.safetensors"}}
        wf["24"] = {"class_type": "StyleModelApply", "inputs": {"conditioning": ["3", 0], "style_model": ["23", 0],
                                                                "clip_vision_output": ["22", 0], **style}}
        wf["4"]["inputs"]["conditioning"] = ["24", 0]
    return wf


def test_clip_vision_encode_of_a_loaded_image_has_comfyuis_fields(runtime):
    centre = run(runtime, vision("tiny_vit_h.safetensors"), "22")
    assert centre.image_embeds.shape == (1, 16) and centre.last_hidden_state.shape == (1, 257, 32)
    assert centre["penultimate_hidden_states"].shape == (1, 257, 32) and centre["mm_projected"] is None
    squashed = run(runtime, vision("tiny_vit_h.safetensors", crop="none"), "22")
    assert not torch.allclose(centre.image_embeds, squashed.image_embeds)


def test_redux_appends_the_image_tokens_and_the_flux_workflow_samples(runtime):
    text = run(runtime, flux(), "3")
    styled = run(runtime, flux({"strength": 0.5, "strength_type": "multiply"}), "24")
    rows = text[0][0].shape[1]
    assert styled[0][0].shape == (1, rows + 16, 64)            # 16 SigLIP tokens of the tiny 56 px encoder
    assert torch.equal(styled[0][0][:, :rows], text[0][0])
    full = run(runtime, flux({"strength": 1.0, "strength_type": "multiply"}), "24")
    assert torch.allclose(styled[0][0][:, rows:], 0.5 * full[0][0][:, rows:], atol=1e-6)
    plain_image = run(runtime, flux(), "9")
    styled_image = run(runtime, flux({"strength": 1.0, "strength_type": "multiply"}), "9")
    assert styled_image.shape == (1, 64, 64, 3) and torch.isfinite(styled_image).all()
    assert not torch.allclose(plain_image, styled_image)


def test_redux_attn_bias_builds_comfyuis_attention_mask(runtime):
    styled = run(runtime, flux({"strength": 0.5, "strength_type": "attn_bias"}), "24")
    cond, options = styled[0]
    rows = cond.shape[1] - 16
    mask = options["attention_mask"]
    assert mask.shape == (1, rows + 17, rows + 17) and mask.dtype == torch.float16
    assert options["attention_mask_img_shape"] == (1, 1)
    bias = float(torch.log(torch.tensor(0.5)).half())
    assert torch.all(mask[:, :rows, rows:rows + 16] == bias) and torch.all(mask[:, rows + 16:, rows:rows + 16] == bias)
    assert torch.all(mask[:, :, :rows] == 0) and torch.all(mask[:, rows:rows + 16, rows:rows + 16] == 0)
    untouched = run(runtime, flux({"strength": 1.0, "strength_type": "attn_bias"}), "24")[0][1]
    assert "attention_mask" not in untouched


def test_unclip_conditioning_appends_an_entry_per_node(runtime):
    wf = {**vision("tiny_vit_h.safetensors"),
          "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
          "3": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["2", 0], "clip_vision_output": ["22", 0],
                                                               "strength": 0.8, "noise_augmentation": 0.1}},
          "4": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["3", 0], "clip_vision_output": ["22", 0],
                                                               "strength": 0.0, "noise_augmentation": 0.3}},
          "5": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["4", 0], "clip_vision_output": ["22", 0],
                                                               "strength": -1.5, "noise_augmentation": 0.2}}}
    out = run(runtime, wf, "5")
    entries = out[0][1]["unclip_conditioning"]
    assert [(e["strength"], e["noise_augmentation"]) for e in entries] == [(0.8, 0.1), (-1.5, 0.2)]
    assert entries[0]["clip_vision_output"].image_embeds.shape == (1, 16)


def unclip(strength: float, noise_augmentation: float = 0.0, seed: int = 3) -> dict:
    wf = {"20": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
          "1": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": "tiny_sd21_unclip_h.safetensors"}},
          "22": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["1", 3], "image": ["20", 0],
                                                              "crop": "center"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
          "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
          "4": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["2", 0], "clip_vision_output": ["22", 0],
                                                               "strength": strength,
                                                               "noise_augmentation": noise_augmentation}},
          "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
          "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": seed, "steps": 2, "cfg": 5.0,
                                                     "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                                     "positive": ["4", 0], "negative": ["3", 0],
                                                     "latent_image": ["5", 0]}},
          "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}}}
    return wf


def test_unclip_checkpoint_samples_with_the_image_embedding(runtime):
    """The tiny SD2.1 unCLIP-H file: its ViT-H (open_clip keys under embedder.model.visual) encodes the
    image, and the UNet's class embedding takes the noise-augmented embedding (zeros at strength 0)."""
    with_image = run(runtime, unclip(1.0), "7")
    assert with_image.shape == (1, 64, 64, 3) and torch.isfinite(with_image).all()
    assert torch.equal(run(runtime, unclip(1.0), "7"), with_image)
    assert not torch.allclose(run(runtime, unclip(0.0), "7"), with_image)
    assert not torch.allclose(run(runtime, unclip(1.0, noise_augmentation=0.5), "7"), with_image)
    assert run(runtime, unclip(1.0), "22").image_embeds.shape == (1, 1024)


def test_sdxl_revision_workflow_samples_with_the_image_in_place_of_the_pooled_text(runtime):
    def revision(strength):
        wf = {**vision("tiny_vit_g_revision.safetensors"),
              "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sdxl.safetensors"}},
              "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat"}},
              "4": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["2", 0], "strength": strength,
                                                                   "clip_vision_output": ["22", 0],
                                                                   "noise_augmentation": 0.1}},
              "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
              "6": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 5, "steps": 2, "cfg": 1.0,
                                                         "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
                                                         "positive": ["4", 0], "negative": ["2", 0],
                                                         "latent_image": ["5", 0]}}}
        return run(runtime, wf, "6")["samples"]

    plain, half, full = revision(0.0), revision(0.5), revision(1.0)
    assert torch.isfinite(full).all() and not torch.allclose(plain, full) and not torch.allclose(half, full)


def gligen_boxes(boxes: list[tuple]) -> dict:
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
          "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a park"}},
          "30": {"class_type": "GLIGENLoader", "inputs": {"gligen_name": "tiny_gligen.safetensors"}}}
    source = ["2", 0]
    for i, (text, width, height, x, y) in enumerate(boxes):
        wf[str(31 + i)] = {"class_type": "GLIGENTextBoxApply",
                           "inputs": {"conditioning_to": source, "clip": ["1", 1], "gligen_textbox_model": ["30", 0],
                                      "text": text, "width": width, "height": height, "x": x, "y": y}}
        source = [str(31 + i), 0]
    return wf


def test_gligen_text_boxes_accumulate_comfyuis_position_entries(runtime):
    wf = gligen_boxes([("a dog", 64, 40, 8, 16), ("a ball", 20, 16, 30, 0)])
    wf["3"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a dog"}}
    out = run(runtime, wf, "32")
    kind, model, boxes = out[0][1]["gligen"]
    assert kind == "position" and model.key_dim == 32 and model.fusers == 7
    # (pooled text, height // 8, width // 8, y // 8, x // 8) per box, in the order the nodes ran
    assert [b[1:] for b in boxes] == [(5, 8, 2, 1), (2, 2, 0, 3)]
    dog = run(runtime, wf, "3")[0][1]["pooled_output"]
    assert boxes[0][0].shape == (1, 32) and torch.equal(boxes[0][0], dog)
    assert not torch.equal(boxes[1][0], dog)


def test_gligen_boxes_steer_sampling_and_leave_the_unet_as_it_was(runtime):
    def sample(boxes):
        wf = gligen_boxes(boxes)
        wf.update({"4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                   "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 1, "steps": 2, "cfg": 7.0,
                                                              "sampler_name": "euler", "scheduler": "normal",
                                                              "denoise": 1.0, "negative": ["2", 0],
                                                              "positive": ["31", 0] if boxes else ["2", 0],
                                                              "latent_image": ["4", 0]}}})
        return run(runtime, wf, "5")["samples"]

    plain = sample([])
    boxed = sample([("a dog", 32, 32, 0, 0)])
    moved = sample([("a dog", 32, 32, 32, 32)])
    assert torch.isfinite(boxed).all() and not torch.allclose(plain, boxed) and not torch.allclose(boxed, moved)
    runtime.executor.reset_cache()                            # run again on the worker's loaded UNet
    assert torch.equal(sample([]), plain)                     # the fusers are detached after each call


EXPECTED_SCHEMAS = {
    "GLIGENLoader": ({"required": {"gligen_name": [["tiny_gligen.safetensors"]]}}, ["GLIGEN"], "loaders"),
    "GLIGENTextBoxApply": ({"required": {
        "conditioning_to": ["CONDITIONING"], "clip": ["CLIP"], "gligen_textbox_model": ["GLIGEN"],
        "text": ["STRING", {"multiline": True, "dynamicPrompts": True}],
        "width": ["INT", {"default": 64, "min": 8, "max": 16384, "step": 8}],
        "height": ["INT", {"default": 64, "min": 8, "max": 16384, "step": 8}],
        "x": ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}],
        "y": ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}]}}, ["CONDITIONING"], "conditioning/gligen"),
    "CLIPVisionLoader": ({"required": {"clip_name": [["tiny_open_clip_h.safetensors", "tiny_siglip.safetensors",
                                                      "tiny_vit_g.safetensors", "tiny_vit_g_revision.safetensors",
                                                      "tiny_vit_h.safetensors",
                                                      "tiny_vit_l.safetensors"]]}},
                         ["CLIP_VISION"], "loaders"),
    "CLIPVisionEncode": ({"required": {"clip_vision": ["CLIP_VISION"], "image": ["IMAGE"],
                                       "crop": [["center", "none"]]}}, ["CLIP_VISION_OUTPUT"], "conditioning"),
    "StyleModelLoader": ({"required": {"style_model_name": [["tiny_redux.safetensors"]]}}, ["STYLE_MODEL"], "loaders"),
    "StyleModelApply": ({"required": {"conditioning": ["CONDITIONING"], "style_model": ["STYLE_MODEL"],
                                      "clip_vision_output": ["CLIP_VISION_OUTPUT"],
                                      "strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}],
                                      "strength_type": [["multiply", "attn_bias"]]}},
                        ["CONDITIONING"], "conditioning/style_model"),
    "unCLIPCheckpointLoader": ({"required": {"ckpt_name": [["tiny-sd1.safetensors", "tiny-sdxl.safetensors",
                                                            "tiny_sd21_unclip_h.safetensors"]]}},
                               ["MODEL", "CLIP", "VAE", "CLIP_VISION"], "loaders"),
    "unCLIPConditioning": ({"required": {"conditioning": ["CONDITIONING"], "clip_vision_output": ["CLIP_VISION_OUTPUT"],
                                         "strength": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}],
                                         "noise_augmentation": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0,
                                                                          "step": 0.01}]}},
                           ["CONDITIONING"], "conditioning"),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_SCHEMAS))
def test_object_info_matches_comfyuis_nodes_py(runtime, name):
    inputs, outputs, category = EXPECTED_SCHEMAS[name]
    info = runtime.registry.object_info(runtime.paths)[name]
    assert info["input"] == inputs and info["output"] == outputs and info["category"] == category
    assert info["output_name"] == outputs and info["python_module"] == "nodes"
