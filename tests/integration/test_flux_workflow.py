"""Flux workflows through `diffmesh run` on tiny files: every DiT node and loader option, the
16-channel latent in the latent and VAE nodes, and an all-in-one checkpoint.

The conditioning comes from a custom node returning ComfyUI's CONDITIONING list (tiny random
tensors of the tiny Flux's widths), the way custom text-encoder nodes hand it over."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffmesh.cli import main

CUSTOM_NODES = '''
import torch
from safetensors.torch import save_file


class TinyFluxConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "rows": ("INT", {"default": 12})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"

    def make(self, seed, rows):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, rows, 64, generator=g), {"pooled_output": torch.randn(1, 32, generator=g)}]],)


class SaveTensor:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})},
                "optional": {"images": ("IMAGE",), "samples": ("LATENT",)}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    def save(self, path, images=None, samples=None):
        out = {}
        if images is not None:
            out["image"] = images.contiguous()
        if samples is not None:
            out["latent"] = samples["samples"].contiguous()
        save_file(out, path)
        return {}


NODE_CLASS_MAPPINGS = {"TinyFluxConditioning": TinyFluxConditioning, "SaveTensor": SaveTensor}
'''


@pytest.fixture(scope="module")
def setup(models_base, tmp_path_factory):
    work = tmp_path_factory.mktemp("flux-workflow")
    nodes = work / "nodes"
    nodes.mkdir()
    (nodes / "tinyflux.py").write_text(CUSTOM_NODES)
    base = work / "base"
    shutil.copytree(models_base / "models", base / "models", copy_function=os.link)
    # an all-in-one file as ComfyUI's CheckpointSave writes Flux: model.diffusion_model.* + vae.*
    models = base / "models"
    sd = {"model.diffusion_model." + k: v for k, v in
          load_file(str(models / "diffusion_models" / "tiny-flux-dev.safetensors")).items()}
    sd.update({"vae." + k: v for k, v in load_file(str(models / "vae" / "tiny-flux-ae.safetensors")).items()})
    save_file(sd, str(models / "checkpoints" / "tiny-flux-aio.safetensors"))
    return work, nodes, base


def _workflow(out: str, unet: dict | None = None, lora: str | None = None, checkpoint: bool = False,
              decode: str = "VAEDecode") -> dict:
    wf = {
        "1": unet or {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors",
                                                             "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingFlux", "inputs": {"model": ["1", 0], "max_shift": 1.15, "base_shift": 0.5,
                                                            "width": 64, "height": 64}},
        "3": {"class_type": "TinyFluxConditioning", "inputs": {"seed": 1, "rows": 12}},
        "4": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["3", 0], "guidance": 3.5}},
        "5": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "6": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "7": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 42, "steps": 3, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple",
                                                   "positive": ["4", 0], "negative": ["5", 0],
                                                   "latent_image": ["6", 0], "denoise": 1.0}},
        "8": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny-flux-ae.safetensors"}},
        "9": {"class_type": decode, "inputs": {"samples": ["7", 0], "vae": ["8", 0]}},
        "10": {"class_type": "SaveTensor", "inputs": {"path": out, "images": ["9", 0], "samples": ["7", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "flux"}},
    }
    if decode == "VAEDecodeTiled":
        wf["9"]["inputs"].update(tile_size=64, overlap=16, temporal_size=64, temporal_overlap=8)
    if lora:
        wf["12"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora,
                                                                    "strength_model": 0.7}}
        wf["2"]["inputs"]["model"] = ["12", 0]
    if checkpoint:
        wf["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-flux-aio.safetensors"}}
        wf["9"]["inputs"]["vae"] = ["1", 2]
    return wf


def _run(setup, name: str, **options) -> dict:
    work, nodes, base = setup
    out = work / f"{name}.safetensors"
    path = work / f"{name}.json"
    path.write_text(json.dumps(_workflow(str(out), **options)))
    code = main(["run", str(path), "--base-directory", str(base), "--cpu", "--custom-nodes-dir", str(nodes)])
    assert code == 0
    return load_file(str(out))


@pytest.fixture(scope="module")
def plain(setup):
    return _run(setup, "plain")


def test_flux_workflow_makes_an_image_from_a_16_channel_latent(setup, plain):
    assert plain["latent"].shape == (1, 16, 8, 8) and plain["image"].shape == (1, 64, 64, 3)
    assert torch.isfinite(plain["latent"]).all() and 0.0 <= float(plain["image"].min())
    assert (setup[2] / "output" / "flux_00001_.png").exists()


def test_all_in_one_checkpoint_gives_the_split_files_result(setup, plain):
    out = _run(setup, "aio", checkpoint=True)
    assert torch.allclose(out["latent"], plain["latent"], atol=1e-5)
    assert torch.allclose(out["image"], plain["image"], atol=1e-4)


def test_fp8_weight_dtype_runs_close_to_fp32(setup, plain):
    unet = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev.safetensors", "weight_dtype": "fp8_e4m3fn"}}
    out = _run(setup, "fp8", unet=unet)
    error = float((out["latent"] - plain["latent"]).norm() / plain["latent"].norm())
    assert 0 < error < 0.2


def test_scaled_fp8_file_loads_and_runs(setup, plain):
    unet = {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-dev-scaled-fp8.safetensors",
                                                   "weight_dtype": "default"}}
    out = _run(setup, "scaled", unet=unet)
    error = float((out["latent"] - plain["latent"]).norm() / plain["latent"].norm())
    assert 0 < error < 0.2


def test_lora_loader_model_only_changes_the_flux_result(setup, plain):
    out = _run(setup, "lora", lora="tiny-flux-kohya.safetensors")
    assert not torch.allclose(out["latent"], plain["latent"], atol=1e-3)


def test_tiled_decode_of_a_flux_latent(setup, plain):
    out = _run(setup, "tiled", decode="VAEDecodeTiled")
    assert out["image"].shape == plain["image"].shape
    assert float((out["image"] - plain["image"]).abs().mean()) < 0.05
