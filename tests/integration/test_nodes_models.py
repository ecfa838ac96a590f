"""Core nodes on tiny random models, run through the real runtime (in-process CPU worker)."""

import argparse

import pytest
import torch

from diffmesh.runtime import Runtime


@pytest.fixture(scope="module")
def runtime(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("base")
    ns = argparse.Namespace(base_directory=str(base), models_dir=str(models_base / "models"), cpu=True)
    rt = Runtime.build(ns)
    yield rt
    rt.close()


def txt2img(ckpt="tiny-sd1.safetensors", seed=1, steps=2, extra=None, sampler="euler", size=64):
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": sampler,
                                                  "scheduler": "normal", "denoise": 1.0, "model": ["4", 0],
                                                  "positive": ["6", 0], "negative": ["7", 0],
                                                  "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    prompt.update(extra or {})
    return prompt


def run(runtime, prompt, node="8", slot=0, extra_data=None):
    result = runtime.executor.execute(prompt, "t", extra_data or {}, None)
    assert result.status == "success", result.error or result.validation_error or result.node_errors
    outputs = runtime.executor.cache.get(node)
    return outputs.outputs[slot][0]


def test_txt2img_makes_an_image_and_is_deterministic(runtime):
    first = run(runtime, txt2img(seed=3))
    runtime.executor.reset_cache()
    again = run(runtime, txt2img(seed=3))
    other = run(runtime, txt2img(seed=4))
    assert first.shape == (1, 64, 64, 3) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("family", ["tiny-sd2-v.safetensors", "tiny-sdxl.safetensors"])
def test_other_families_run(runtime, family):
    assert run(runtime, txt2img(ckpt=family)).shape == (1, 64, 64, 3)


def test_sampler_progress_reaches_the_sink_with_previews(runtime):
    events = []
    result = runtime.executor.execute(txt2img(seed=11, steps=3), "p", {"preview_method": "latent2rgb"},
                                      lambda e, d: events.append((e, d)))
    assert result.status == "success"
    assert [(d["value"], d["max"]) for e, d in events if e == "progress"] == [(1, 3), (2, 3), (3, 3)]
    previews = [d["image"] for e, d in events if e == "preview"]
    assert len(previews) == 3 and previews[0].size == (8, 8)


def test_lora_changes_the_model_and_zero_strength_passes_through(runtime, models_base):
    lora = {"10": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1],
                                                         "lora_name": "tiny-sd1-kohya.safetensors",
                                                         "strength_model": 1.0, "strength_clip": 1.0}}}
    patched = txt2img(seed=5, extra=lora)
    patched["3"]["inputs"]["model"] = ["10", 0]
    patched["6"]["inputs"]["clip"] = ["10", 1]
    base = run(runtime, txt2img(seed=5))
    assert not torch.equal(run(runtime, patched), base)
    model, clip = run(runtime, patched, node="10", slot=0), run(runtime, patched, node="10", slot=1)
    assert model.loras[0].strength == 1.0 and clip.loras[0].path.endswith("tiny-sd1-kohya.safetensors")
    patched["10"]["inputs"].update(strength_model=0.0, strength_clip=0.0)
    assert torch.equal(run(runtime, patched), base)


def test_clip_set_last_layer_sets_clip_skip(runtime):
    extra = {"11": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["4", 1], "stop_at_clip_layer": -2}}}
    prompt = txt2img(extra=extra)
    prompt["6"]["inputs"]["clip"] = ["11", 0]
    assert run(runtime, prompt, node="11").clip_skip == -2
    skipped, plain = run(runtime, prompt, node="6"), run(runtime, txt2img(), node="6")
    assert not torch.equal(skipped[0][0], plain[0][0])


def test_loader_device_input_places_the_handles(runtime):
    prompt = txt2img()
    prompt["4"]["inputs"]["device"] = "cpu"
    model = run(runtime, prompt, node="4")
    assert model.device == "cpu" and model.family == "sd1"


def test_ksampler_advanced_past_the_end_returns_the_latent_unchanged(runtime):
    extra = {"12": {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["4", 0], "add_noise": "disable", "noise_seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
        "start_at_step": 5, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}}
    prompt = txt2img(extra=extra)
    prompt["8"]["inputs"]["samples"] = ["12", 0]
    assert not run(runtime, prompt, node="12")["samples"].any()


def test_vae_encode_and_tiled_decode_shapes(runtime):
    extra = {"13": {"class_type": "VAEEncode", "inputs": {"pixels": ["8", 0], "vae": ["4", 2]}},
             "14": {"class_type": "VAEDecodeTiled", "inputs": {"samples": ["13", 0], "vae": ["4", 2], "tile_size": 64,
                                                               "overlap": 32, "temporal_size": 64,
                                                               "temporal_overlap": 8}},
             "15": {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}}}
    prompt = txt2img(extra=extra)
    assert run(runtime, prompt, node="13")["samples"].shape == (1, 4, 8, 8)
    assert run(runtime, prompt, node="14").shape == (1, 64, 64, 3)


def test_vae_loader_and_inpaint_encode(runtime):
    extra = {"16": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-vae.safetensors"}},
             "20": {"class_type": "LoadImage", "inputs": {"image": "masked.png"}},
             "17": {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["20", 0], "vae": ["16", 0],
                                                                   "mask": ["20", 1], "grow_mask_by": 6}}}
    import numpy as np
    from PIL import Image

    rgba = np.full((64, 64, 4), 255, dtype=np.uint8)
    rgba[16:32, 16:32, 3] = 0                       # transparent square = area to regenerate
    Image.fromarray(rgba, "RGBA").save(runtime.paths.input_dir / "masked.png")
    prompt = txt2img(extra=extra)
    prompt["3"]["inputs"]["latent_image"] = ["17", 0]
    prompt["8"]["inputs"]["vae"] = ["16", 0]
    latent = run(runtime, prompt, node="17")
    assert latent["samples"].shape == (1, 4, 8, 8) and latent["noise_mask"].shape == (1, 1, 64, 64)
    assert latent["noise_mask"][0, 0, 24, 24] == 1 and latent["noise_mask"][0, 0, 60, 60] == 0
    assert run(runtime, prompt).shape == (1, 64, 64, 3)
