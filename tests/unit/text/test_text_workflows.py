"""Whole workflows on tiny models: the text encoders' conditioning reaches each family's transformer
(Flux: DualCLIPLoader + FluxGuidance; Z-Image: CLIPLoader lumina2, the frontend's default graph;
Qwen-Image: CLIPLoader qwen_image with a negative at cfg 2.5) and the prompt changes the image."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

from diffmesh.runtime import Runtime


@pytest.fixture(scope="module")
def runtime(te_files, tmp_path_factory):
    from diffmesh.models.dit.testfiles import make_dit_file
    from diffmesh.models.testmodels_dit import write_tiny_dit_models

    models = tmp_path_factory.mktemp("models")
    for folder in ("diffusion_models", "vae", "text_encoders"):
        (models / folder).mkdir()
    make_dit_file("flux", "tiny", models / "diffusion_models" / "tiny-flux.safetensors")
    make_dit_file("flux-vae", "tiny", models / "vae" / "tiny-flux-vae.safetensors")
    write_tiny_dit_models(models)
    for path in te_files.values():
        os.symlink(path, models / "text_encoders" / os.path.basename(path))
    rt = Runtime.build(argparse.Namespace(base_directory=str(tmp_path_factory.mktemp("base")),
                                          models_dir=str(models), cpu=True))
    yield rt
    rt.close()


def _graph(unet, clip_node, positive, negative, cfg, vae, sampling=None):
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": clip_node,
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["2", 0]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["2", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 2, "cfg": cfg, "sampler_name": "euler",
                                                  "scheduler": "simple", "denoise": 1.0, "model": ["1", 0],
                                                  "positive": ["3", 0], "negative": ["4", 0],
                                                  "latent_image": ["6", 0]}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": vae}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
    }
    if sampling:
        prompt["11"] = {"class_type": sampling[0], "inputs": {"model": ["1", 0], **sampling[1]}}
        prompt["7"]["inputs"]["model"] = ["11", 0]
    return prompt


def flux(text):
    dual = {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "tiny-t5xxl.safetensors",
                                                       "clip_name2": "tiny-clip_l.safetensors", "type": "flux"}}
    prompt = _graph("tiny-flux.safetensors", dual, text, "", 1.0, "tiny-flux-vae.safetensors")
    prompt["5"] = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["3", 0], "guidance": 3.5}}
    prompt["7"]["inputs"]["positive"] = ["5", 0]
    return prompt


def zimage(text):
    clip = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-qwen_3_4b.safetensors", "type": "lumina2"}}
    return _graph("tiny-zimage.safetensors", clip, text, "", 1.0, "tiny-flux-vae.safetensors",
                  ("ModelSamplingAuraFlow", {"shift": 3.0}))


def qwen_image(text, runtime):
    clip = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny-qwen_2.5_vl_7b.safetensors",
                                                   "type": "qwen_image"}}
    vae = next(n for n in runtime.paths.list("vae") if "wan" in n)
    return _graph("tiny-qwenimage.safetensors", clip, text, "blurry", 2.5, vae,
                  ("ModelSamplingAuraFlow", {"shift": 3.1}))


def _image(runtime, prompt):
    result = runtime.executor.execute(prompt, "t", {}, None)
    assert result.status == "success", result.error or result.validation_error or result.node_errors
    return runtime.executor.cache.get("9").outputs[0][0]


@pytest.mark.parametrize("family", ["flux", "zimage", "qwen_image"])
def test_the_prompt_reaches_the_transformer(runtime, family):
    make = {"flux": flux, "zimage": zimage, "qwen_image": lambda t: qwen_image(t, runtime)}[family]
    cat, fox = _image(runtime, make("a photo of a cat")), _image(runtime, make("a red fox"))
    assert cat.shape == (1, 64, 64, 3) and torch.isfinite(cat).all()
    assert not torch.equal(cat, fox)
