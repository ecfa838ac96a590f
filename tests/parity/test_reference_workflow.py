"""Parity with ComfyUI 0.8.0: `diffmesh run` on the reference workflow and its stages.

Reference: shared/reference/sd15_256_euler (one ComfyUI run of workflow.json with the full-size
random SD1.5 checkpoint, CPU, fp32). The image must be >= 40 dB PSNR and the final latent within
1e-3 relative L2; the stages (initial noise, sigmas, first denoised predictions) are checked on
their own so a failure points at the stage that drifted.
"""

import argparse
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(scope="module")
def reference(reference_dir):
    folder = reference_dir / "sd15_256_euler"
    return {"dir": folder, "components": load_file(str(folder / "components.safetensors")),
            "latent": load_file(str(folder / "expected.latent"))["latent_tensor"]}


@pytest.fixture(scope="module")
def base_dir(sd15_full_checkpoint, tmp_path_factory):
    base = tmp_path_factory.mktemp("parity")
    target = base / "models" / "checkpoints" / "sd15-random.safetensors"
    target.parent.mkdir(parents=True)
    try:
        os.link(sd15_full_checkpoint, target)       # a hard link: model folders refuse links leaving them
    except OSError:
        shutil.copy(sd15_full_checkpoint, target)
    return base


@pytest.fixture(scope="module")
def cli_run(reference, base_dir):
    from diffmesh.cli import main

    code = main(["run", str(reference["dir"] / "workflow.json"), "--base-directory", str(base_dir), "--cpu"])
    assert code == 0
    return base_dir / "output"


def test_png_matches_comfyui(reference, cli_run):
    ours = np.asarray(Image.open(cli_run / "sd15_256_4steps_00001_.png").convert("RGB"))
    expected = np.asarray(Image.open(reference["dir"] / "expected.png").convert("RGB"))
    assert ours.shape == expected.shape == (256, 256, 3)
    value = psnr(ours, expected)
    print(f"PNG PSNR vs ComfyUI: {value:.2f} dB")
    assert value >= 40.0


def test_final_latent_matches_comfyui(reference, cli_run):
    ours = load_file(str(cli_run / "latents" / "sd15_256_4steps_00001_.latent"))
    assert "latent_format_version_0" in ours
    error = rel_l2(ours["latent_tensor"], reference["latent"])
    print(f"final latent relative L2 vs ComfyUI: {error:.3g}")
    assert error <= 1e-3


def test_initial_noise_is_bit_identical(reference):
    from diffmesh.sampling.noise import prepare_noise

    noise = prepare_noise(torch.zeros(1, 4, 32, 32), 42)
    assert torch.equal(noise, reference["components"]["noise"])


def test_sigmas_match(reference):
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.schedules import ksampler_sigmas

    sigmas = ksampler_sigmas(model_sampling_for("sd1"), "normal", "euler", 4, 1.0)
    assert torch.allclose(sigmas, reference["components"]["sigmas"], rtol=1e-6, atol=1e-7)


@pytest.fixture(scope="module")
def runtime(base_dir):
    from diffmesh.runtime import Runtime

    rt = Runtime.build(argparse.Namespace(base_directory=str(base_dir), cpu=True))
    yield rt
    rt.close()


@pytest.mark.parametrize("which", ["pos", "neg"])
def test_denoised_prediction_at_step0_matches(reference, runtime, which):
    """One euler step from sigma0 to 0 with cfg 1 returns the model's denoised prediction D(x, sigma0).

    The reference captured D at x = noise * sigma0 (matches it to ~3e-7); the sampler starts from
    noise * sqrt(1 + sigma0^2) at sigma_max, so the job's noise is rescaled to give that x."""
    from diffmesh.models.handle import ModelHandle
    from diffmesh.sampling.job import SampleJob

    comps = reference["components"]
    path = str(runtime.paths.resolve("checkpoints", "sd15-random.safetensors"))
    cond = [[comps[f"cond_{which}"], {"pooled_output": comps[f"pooled_{which}"]}]]
    sigmas = torch.stack([comps["sigmas"][0], torch.tensor(0.0)])
    s0 = float(sigmas[0])
    noise = comps["noise"] * s0 / (1.0 + s0 ** 2) ** 0.5
    job = SampleJob(latent=torch.zeros(1, 4, 32, 32), noise=noise, sigmas=sigmas, sampler_name="euler",
                    cfg=1.0, positive=cond, negative=cond, seed=42)
    result = runtime.engine.sample(ModelHandle(path, "unet", "sd1"), job)
    denoised = result * 0.18215                               # back to the scaled space the reference stores
    assert rel_l2(denoised, comps[f"denoised_{which}_step0"]) <= 1e-4


def test_lowvram_under_a_quarter_budget_gives_the_highvram_latent_bit_for_bit(reference, base_dir, cli_run):
    """The full-size UNet (3.4 GB fp32) streamed through a 1 GB budget: same numbers as resident."""
    from diffmesh.cli import main

    out = base_dir / "output-lowvram"
    code = main(["run", str(reference["dir"] / "workflow.json"), "--base-directory", str(base_dir), "--cpu",
                 "--lowvram", "--vram-budget", "1", "--output-directory", str(out)])
    assert code == 0
    resident = load_file(str(cli_run / "latents" / "sd15_256_4steps_00001_.latent"))["latent_tensor"]
    streamed = load_file(str(out / "latents" / "sd15_256_4steps_00001_.latent"))["latent_tensor"]
    assert torch.equal(streamed, resident)
