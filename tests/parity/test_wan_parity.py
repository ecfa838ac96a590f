"""Parity with ComfyUI 0.8.0 on Wan 2.1 text-to-video (reference/wan21_64_euler).

The reference run: UNETLoader (random Wan 2.1 T2V, dim 256, 2 layers) -> ModelSamplingSD3(8) ->
KSampler(seed 42, 4 steps, euler, simple, cfg 5 with a negative) on a 64x64, 5-frame empty video
latent (1x16x2x8x8) -> VAELoader (the full random Wan 2.1 VAE) + VAEDecode of all 5 frames. The
text encoder is bypassed there: the conditioning is the recorded rows (80 positive, 120 negative)
padded with zero rows to 512, as UMT5's output is; a custom node returns it in ComfyUI's list format
and every other node is ours, run by `diffmesh run`. Positive and negative have the same shape, so
CFG batches them. Tolerances (reference README): sigmas and noise equal, denoised at step 0 within
1e-5 relative L2, final latent within 1e-4, every decoded frame >= 60 dB PSNR.
"""

import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

FOLDER = "wan21_64_euler"
UNET, VAE = "wan21-t2v-tiny-random.safetensors", "wan21-vae-random.safetensors"

CUSTOM_NODES = '''
import torch
from safetensors.torch import load_file, save_file


class RecordedRows:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""}), "key": ("STRING", {"default": "cond_pos_rows"}),
                             "rows": ("INT", {"default": 512})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "load"

    def load(self, path, key, rows):
        real = load_file(path)[key]
        cond = torch.zeros((1, rows, real.shape[2]))
        cond[:, :real.shape[1]] = real
        return ([[cond, {}]],)


class SaveTensors:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "images": ("IMAGE",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    def save(self, samples, images, path):
        save_file({"latent": samples["samples"].contiguous(), "image": images.contiguous()}, path)
        return {}


NODE_CLASS_MAPPINGS = {"RecordedRows": RecordedRows, "SaveTensors": SaveTensors}
'''


def rel_l2(a, b) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def psnr(a, b) -> float:
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def _link(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    try:
        os.link(source, target)                  # a hard link: model folders refuse links leaving them
    except OSError:
        shutil.copy(source, target)


@pytest.fixture(scope="module")
def comps(reference_dir):
    return load_file(str(reference_dir / FOLDER / "components.safetensors"))


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, dit_reference_weights):
    base = tmp_path_factory.mktemp("wan-parity")
    _link(dit_reference_weights("wan21"), base / "models" / "diffusion_models" / UNET)
    _link(dit_reference_weights("wan21", "vae"), base / "models" / "vae" / VAE)
    return base


def _handle(base_dir, sampling=None):
    from diffmesh.models.handle import ModelHandle

    return ModelHandle(str(base_dir / "models" / "diffusion_models" / UNET), "unet", "wan21", sampling=sampling)


def _context(comps, which):
    ctx = torch.zeros(1, int(comps["context_len"][0]), 4096)
    rows = comps[f"cond_{which}_rows"]
    ctx[:, :rows.shape[1]] = rows
    return ctx


def test_file_is_detected_as_comfyui_detects_it(base_dir, reference_dir):
    from diffmesh.models import detect
    from diffmesh.models.dit.model import file_config

    run = json.loads((reference_dir / FOLDER / "run.json").read_text())["detected_unet_config"]
    path = _handle(base_dir).path
    assert detect.detect_family(path) == "wan21"
    _, cfg = file_config(path, "wan21")
    assert {k: cfg[k] for k in ("dim", "num_heads", "ffn_dim", "num_layers", "in_dim", "out_dim", "model_type")} == \
        {k: run[k] for k in ("dim", "num_heads", "ffn_dim", "num_layers", "in_dim", "out_dim", "model_type")}


def test_sigmas_equal_with_and_without_model_sampling_sd3(comps, base_dir):
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.schedules import ksampler_sigmas

    node = _handle(base_dir, ("shift", 8.0, 1000.0))
    assert torch.equal(ksampler_sigmas(model_sampling_for(node), "simple", "euler", 4, 1.0), comps["sigmas"])
    default = ksampler_sigmas(model_sampling_for(_handle(base_dir)), "simple", "euler", 4, 1.0)
    assert torch.equal(default, comps["sigmas_default"])


def test_noise_of_the_empty_video_latent_is_bit_identical(comps):
    from diffmesh.nodes.video import empty_video_latent
    from diffmesh.sampling.noise import prepare_noise

    latent = empty_video_latent(None, 64, 64, 5, 1)[0]["samples"]
    assert latent.shape == (1, 16, 2, 8, 8)
    assert torch.equal(prepare_noise(latent, 42), comps["noise"])


def test_denoised_at_step0_within_1e5(comps, base_dir):
    """Positive and negative denoised predictions at sigma 1 on x = noise, through the built component
    (detection, config from shapes, weights assigned), each context padded to 512 rows."""
    from diffmesh.models.load import build_component

    model = build_component(_handle(base_dir), "cpu")
    x, sigma = comps["noise"], torch.tensor([1.0])
    for which in ("pos", "neg"):
        with torch.inference_mode():
            out = model(x, model.model_sampling.timestep(sigma), _context(comps, which))
        denoised = model.model_sampling.calculate_denoised(sigma, out, x)
        error = rel_l2(denoised, comps[f"denoised_{which}_step0"])
        print(f"wan21 denoised ({which}) step 0 relative L2 vs ComfyUI: {error:.3g}")
        assert error <= 1e-5


def _workflow(components: str, out: str) -> dict:
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": UNET, "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 8.0}},
        "3": {"class_type": "RecordedRows", "inputs": {"path": components, "key": "cond_pos_rows", "rows": 512}},
        "4": {"class_type": "RecordedRows", "inputs": {"path": components, "key": "cond_neg_rows", "rows": 512}},
        "5": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 5,
                                                                  "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 42, "steps": 4, "cfg": 5.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "positive": ["3", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": VAE}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveTensors", "inputs": {"samples": ["6", 0], "images": ["8", 0], "path": out}},
    }


@pytest.fixture(scope="module")
def run_outputs(reference_dir, base_dir, tmp_path_factory):
    from diffmesh.cli import main

    work = tmp_path_factory.mktemp("wan-run")
    nodes = work / "nodes"
    nodes.mkdir()
    (nodes / "recorded.py").write_text(CUSTOM_NODES)
    out = work / "tensors.safetensors"
    workflow = work / "workflow.json"
    workflow.write_text(json.dumps(_workflow(str(reference_dir / FOLDER / "components.safetensors"), str(out))))
    code = main(["run", str(workflow), "--base-directory", str(base_dir), "--cpu", "--custom-nodes-dir", str(nodes)])
    assert code == 0
    return load_file(str(out))


def test_final_latent_within_1e4_through_ksampler_with_cfg_5(comps, run_outputs):
    assert run_outputs["latent"].shape == comps["latent_final"].shape == (1, 16, 2, 8, 8)
    error = rel_l2(run_outputs["latent"], comps["latent_final"])
    print(f"wan21 final latent relative L2 vs ComfyUI: {error:.3g}")
    assert error <= 1e-4


def test_all_five_frames_decode_at_least_60db(comps, run_outputs):
    assert run_outputs["image"].shape == comps["image_float"].shape == (5, 64, 64, 3)
    values = [psnr(run_outputs["image"][i], comps["image_float"][i]) for i in range(5)]
    print("wan21 decoded frames PSNR vs ComfyUI: " + ", ".join(f"{v:.1f}" for v in values) + " dB")
    assert min(values) >= 60.0
