"""InpaintModelConditioning, DifferentialDiffusion and SDTurboScheduler on tiny random models
through the real runtime (in-process CPU worker): ComfyUI's schemas, the conditioning entries and
latent against a hand computation, an SD1 inpainting checkpoint (9-channel conv_in) sampling with
the concat channels, and a plain checkpoint ignoring them."""

import argparse
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffmesh.models.inpaint import BLANK_INPAINT_LATENT, concat_cond
from diffmesh.models.testmodels_inpaint import write_sd1_inpaint
from diffmesh.runtime import Runtime
from diffmesh.sampling.latent_formats import for_family
from diffmesh.sampling.mask_functions import differential
from diffmesh.sampling.model_sampling import ModelSampling

INPAINT = "tiny-sd1-inpaint.safetensors"


@pytest.fixture(scope="module")
def runtime(models_base, tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    (models / "checkpoints").mkdir()
    os.symlink(models_base / "models" / "checkpoints" / "tiny-sd1.safetensors", models / "checkpoints" / "tiny-sd1.safetensors")
    write_sd1_inpaint(models / "checkpoints" / INPAINT)
    base = tmp_path_factory.mktemp("base")
    rt = Runtime.build(argparse.Namespace(base_directory=str(base), models_dir=str(models), cpu=True))
    rng = np.random.default_rng(0)
    rgba = np.concatenate([rng.integers(0, 256, (70, 66, 3)), np.full((70, 66, 1), 255)], axis=2).astype(np.uint8)
    rgba[20:44, 16:40, 3] = 0                                   # transparent = mask 1 = regenerate
    Image.fromarray(rgba, "RGBA").save(rt.paths.input_dir / "hole.png")
    rgba[:, :, 3] = 255
    rgba[:, 33:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(rt.paths.input_dir / "half.png")
    ramp = rgba.copy()
    ramp[:, :, 3] = np.linspace(255, 0, 66).astype(np.uint8)[None, :]     # mask 0 -> 1 left to right
    Image.fromarray(ramp, "RGBA").save(rt.paths.input_dir / "ramp.png")
    yield rt
    rt.close()


def _prompt(ckpt=INPAINT, image="hole.png", noise_mask=True, seed=3, extra=None, latent=("11", 2),
            model=("4", 0), conds=(("11", 0), ("11", 1))):
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": image}},
        "11": {"class_type": "InpaintModelConditioning", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["10", 0], "mask": ["10", 1],
            "noise_mask": noise_mask}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": list(model), "positive": list(conds[0]), "negative": list(conds[1]),
            "latent_image": list(latent)}},
        "99": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "t"}},
    }
    prompt.update(extra or {})
    return prompt


def _run(runtime, prompt, node="3", slot=0):
    result = runtime.executor.execute(prompt, "t", {}, None)
    assert result.status == "success", result.error or result.validation_error or result.node_errors
    return runtime.executor.cache.get(node).outputs[slot][0]


def test_schemas_are_comfyuis(runtime):
    info = runtime.registry.object_info(runtime.paths)
    imc = info["InpaintModelConditioning"]
    assert imc["input"]["required"] == {
        "positive": ["CONDITIONING"], "negative": ["CONDITIONING"], "vae": ["VAE"], "pixels": ["IMAGE"],
        "mask": ["MASK"], "noise_mask": ["BOOLEAN", {"default": True, "tooltip": (
            "Add a noise mask to the latent so sampling will only happen within the mask. Might improve results "
            "or completely break things depending on the model.")}]}
    assert imc["input_order"]["required"] == ["positive", "negative", "vae", "pixels", "mask", "noise_mask"]
    assert imc["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    assert imc["output_name"] == ["positive", "negative", "latent"]
    dd = info["DifferentialDiffusion"]
    assert dd["input"] == {"required": {"model": ["MODEL"]},
                           "optional": {"strength": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}]}}
    assert dd["output"] == ["MODEL"] and dd["display_name"] == "Differential Diffusion" and dd["experimental"]
    assert dd["python_module"] == "comfy_extras.nodes_differential_diffusion"
    turbo = info["SDTurboScheduler"]
    assert turbo["input"]["required"] == {"model": ["MODEL"], "steps": ["INT", {"default": 1, "min": 1, "max": 10}],
                                          "denoise": ["FLOAT", {"default": 1.0, "min": 0, "max": 1.0, "step": 0.01}]}
    assert turbo["output"] == ["SIGMAS"]


def test_inpaint_model_conditioning_equals_hand_computation(runtime):
    _run(runtime, _prompt(), node="11")
    positive, negative, latent = (slot[0] for slot in runtime.executor.cache.get("11").outputs)
    pixels, mask = (slot[0] for slot in runtime.executor.cache.get("10").outputs)
    vae = runtime.executor.cache.get("4").outputs[2][0]
    # 70 x 66 is cropped to 64 x 64 from row 3, column 1; masked pixels become 0.5
    crop_mask = mask.reshape(1, 1, 70, 66)[:, :, 3:67, 1:65]
    grey = pixels[:, 3:67, 1:65, :].clone()
    grey[crop_mask[:, 0].round() == 1] = 0.5
    expected_concat = runtime.engine.vae_encode(vae, grey)
    for conditioning, prompt_text in ((positive, "a cat"), (negative, "")):
        assert len(conditioning) == 1
        options = conditioning[0][1]
        assert torch.equal(options["concat_latent_image"], expected_concat)
        assert torch.equal(options["concat_mask"], crop_mask)
    assert torch.equal(latent["samples"], runtime.engine.vae_encode(vae, pixels))
    assert torch.equal(latent["noise_mask"], crop_mask)
    assert crop_mask[0, 0, 17, 15] == 1 and crop_mask[0, 0, 40, 40] == 0
    _run(runtime, _prompt(noise_mask=False), node="11")
    assert "noise_mask" not in runtime.executor.cache.get("11").outputs[2][0]


def test_concat_cond_orders_mask_then_scaled_image_and_falls_back_as_comfyui():
    fmt = for_family("sd1")
    image, mask = torch.randn(1, 4, 8, 8), (torch.rand(1, 1, 64, 64) > 0.5).float()
    got = concat_cond({"concat_latent_image": image, "concat_mask": mask}, (2, 4, 8, 8), fmt)
    small = torch.nn.functional.interpolate(mask, size=(8, 8), mode="bilinear").round()
    assert torch.equal(got, torch.cat([small, image * 0.18215], dim=1).repeat(2, 1, 1, 1))
    sampler_latent, sampler_mask = torch.randn(1, 4, 8, 8), torch.rand(1, 4, 8, 8)
    got = concat_cond({"latent_image": sampler_latent, "denoise_mask": sampler_mask}, (1, 4, 8, 8), fmt)
    assert torch.equal(got, torch.cat([sampler_mask[:, :1].round(), sampler_latent], dim=1))
    blank = concat_cond({"latent_image": sampler_latent}, (1, 4, 8, 8), fmt)     # no mask: ones + black image
    assert torch.equal(blank[:, 0], torch.ones(1, 8, 8))
    assert torch.allclose(blank[0, 1:, 3, 3], torch.tensor(BLANK_INPAINT_LATENT))


def test_inpainting_checkpoint_samples_with_the_mask_and_image_channels(runtime):
    hole = _run(runtime, _prompt())["samples"]
    half = _run(runtime, _prompt(image="half.png"))["samples"]
    assert hole.shape == (1, 4, 8, 8) and torch.isfinite(hole).all()
    assert not torch.equal(hole, half)
    # without a noise mask the whole latent is denoised, still guided by the concat channels
    whole_hole = _run(runtime, _prompt(noise_mask=False))["samples"]
    whole_half = _run(runtime, _prompt(image="half.png", noise_mask=False))["samples"]
    assert not torch.allclose(whole_hole, whole_half, atol=1e-4)


def test_plain_checkpoint_ignores_the_concat_channels(runtime):
    with_concat = _run(runtime, _prompt(ckpt="tiny-sd1.safetensors", noise_mask=False))["samples"]
    extra = {"12": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}}
    plain = _run(runtime, _prompt(ckpt="tiny-sd1.safetensors", extra=extra, latent=("12", 0),
                                  conds=(("6", 0), ("7", 0))))["samples"]
    assert torch.equal(with_concat, plain)


def _masked(image, diff):
    extra = {"12": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
             "13": {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["12", 0], "mask": ["10", 1]}}}
    if diff:
        extra["14"] = {"class_type": "DifferentialDiffusion", "inputs": {"model": ["4", 0], "strength": 1.0}}
    return _prompt(ckpt="tiny-sd1.safetensors", image=image, extra=extra, latent=("13", 0),
                   model=("14", 0) if diff else ("4", 0), conds=(("6", 0), ("7", 0)))


def test_differential_diffusion_all_ones_equals_plain_and_a_ramp_differs(runtime):
    ones = {"15": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 66, "height": 70}}}
    plain = _masked("ramp.png", False)
    plain.update(ones)
    plain["13"]["inputs"]["mask"] = ["15", 0]
    diff = _masked("ramp.png", True)
    diff.update(ones)
    diff["13"]["inputs"]["mask"] = ["15", 0]
    assert torch.equal(_run(runtime, plain)["samples"], _run(runtime, diff)["samples"])
    assert not torch.allclose(_run(runtime, _masked("ramp.png", False))["samples"],
                              _run(runtime, _masked("ramp.png", True))["samples"], atol=1e-5)


def test_differential_mask_thresholds_by_progress():
    ms = ModelSampling()
    sigmas = torch.tensor([ms.sigma(torch.tensor(999.0)), ms.sigma(torch.tensor(499.0)), 0.0])
    mask = torch.tensor([0.0, 0.3, 0.5, 0.6, 1.0])
    t_to = float(ms.timestep(ms.sigma_min))
    threshold = (499.0 - t_to) / (999.0 - t_to)
    got = differential(sigmas[1:2], mask, sigmas, ms)
    assert torch.equal(got, (mask >= threshold).float())
    assert torch.equal(differential(sigmas[:1], mask, sigmas, ms), (mask >= 1.0).float())
    blended = differential(sigmas[1:2], mask, sigmas, ms, strength=0.25)
    assert torch.allclose(blended, 0.25 * (mask >= threshold).float() + 0.75 * mask)


def test_sd_turbo_scheduler_sigmas(runtime):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    table = ((1 - torch.cumprod(1 - betas, 0)) / torch.cumprod(1 - betas, 0)) ** 0.5
    for steps, denoise, timesteps in ((1, 1.0, [999]), (4, 1.0, [999, 899, 799, 699]), (2, 0.5, [499, 399])):
        prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
                  "20": {"class_type": "SDTurboScheduler",
                         "inputs": {"model": ["4", 0], "steps": steps, "denoise": denoise}},
                  "21": {"class_type": "PreviewAny", "inputs": {"source": ["20", 0]}}}
        sigmas = _run(runtime, prompt, node="20")
        expected = torch.cat([table[timesteps].float(), torch.zeros(1)])
        assert sigmas.shape == (steps + 1,) and torch.allclose(sigmas, expected, rtol=1e-5)


def test_flux_fill_concat_folds_each_8x8_mask_block_into_64_channels():
    from diffmesh.models.dit.flux import concat_cond as flux_concat

    fmt = for_family("flux")
    config = {"in_channels": 96, "out_channels": 16}
    image, mask = torch.randn(1, 16, 4, 6), torch.zeros(1, 1, 32, 48)
    mask[0, 0, 8 + 2, 16 + 5] = 1.0                      # latent cell (1, 2), pixel (2, 5) inside it
    got = flux_concat({"concat_latent_image": image, "concat_mask": mask}, (1, 16, 4, 6), config, fmt)
    assert got.shape == (1, 16 + 64, 4, 6)
    assert torch.allclose(got[:, :16], fmt.process_in(image))
    folded = got[0, 16:]
    assert folded[2 * 8 + 5, 1, 2] == 1 and folded.sum() == 1
    assert flux_concat({}, (1, 16, 4, 6), {"in_channels": 16, "out_channels": 16}, fmt) is None
    no_mask = flux_concat({}, (2, 16, 4, 6), config, fmt)     # zeros image, all-ones mask
    assert torch.equal(no_mask[:, 16:], torch.ones(2, 64, 4, 6))


def test_flux_fill_file_samples_with_the_image_and_mask_channels(models_base, tmp_path):
    from diffmesh.models.testmodels_inpaint import write_flux_fill
    from diffmesh.sampling.job import SampleJob

    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    write_flux_fill(models / "diffusion_models" / "tiny-flux-fill.safetensors")
    rt = Runtime.build(argparse.Namespace(base_directory=str(tmp_path / "base"), models_dir=str(models), cpu=True))
    try:
        prompt = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny-flux-fill.safetensors",
                                                               "weight_dtype": "default"}},
                  "2": {"class_type": "SDTurboScheduler", "inputs": {"model": ["1", 0], "steps": 1, "denoise": 1.0}},
                  "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}}}
        handle = _run(rt, prompt, node="1")
        g = torch.Generator().manual_seed(0)
        context, pooled, image = torch.randn(1, 12, 64, generator=g), torch.randn(1, 32, generator=g), torch.randn(1, 16, 8, 8, generator=g)
        latent, noise = torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g)

        def sample(mask):
            options = {"pooled_output": pooled, "concat_latent_image": image, "concat_mask": mask}
            job = SampleJob(latent=latent, noise=noise, sigmas=torch.tensor([1.0, 0.5, 0.0]), sampler_name="euler",
                            cfg=1.0, positive=[[context, options]], negative=[[context * 0, options]], seed=1)
            return rt.engine.sample(handle, job)

        left, right = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
        left[..., :32], right[..., 32:] = 1.0, 1.0
        a, b = sample(left), sample(right)
        assert a.shape == (1, 16, 8, 8) and torch.isfinite(a).all() and not torch.allclose(a, b, atol=1e-5)
    finally:
        rt.close()


def test_inpainting_unet_batch_split_equals_one_device(tmp_path):
    """Rows of a batch sampled apart (batch parallel) get the same concat channels as together:
    the sampler's latent and mask rows are placed in the full batch before the UNet inputs are built."""
    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.pipeline import run_sample_job
    from diffmesh.sampling.schedules import ksampler_sigmas

    path = write_sd1_inpaint(tmp_path / "inpaint.safetensors")
    model = build_component(ModelHandle(path, "unet", "sd1"))
    assert model.concat_channels == 5
    g = torch.Generator().manual_seed(0)
    latent, mask = torch.randn(3, 4, 8, 8, generator=g), torch.zeros(3, 64, 64)
    for i in range(3):
        mask[i, 8 * i:40, 16:] = 1.0
    cond = [[torch.randn(1, 4, 32, generator=g), {}]]
    for fn in (None, ("differential", 0.5)):
        job = SampleJob(latent=latent, noise=prepare_noise(latent, 2), sampler_name="euler", cfg=3.0, seed=2,
                        sigmas=ksampler_sigmas(model.model_sampling, "normal", "euler", 3), positive=cond,
                        negative=[[cond[0][0] * 0, {}]], noise_mask=mask, denoise_mask_fn=fn)
        full = run_sample_job(model, job, None)
        parts = torch.cat([run_sample_job(model, job.sliced(0, 1), None), run_sample_job(model, job.sliced(1, 3), None)])
        # a random UNet gives values in the hundreds; batch size changes float rounding only (~1e-6 relative)
        assert torch.allclose(full, parts, rtol=1e-5, atol=1e-3)
