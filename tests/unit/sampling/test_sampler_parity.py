"""Every sampler gives ComfyUI's numbers: trajectories recorded by running ComfyUI 0.8.0's own sampler
functions on the Gaussian toy denoiser (tests/data/samplers/README.md), for an eps model (Karras
sigmas, cfg 3) and a rectified-flow model (shift 3, "simple" sigmas from sigma 1, cfg 1.5). Per-step
noise comes from the source the sampler's table entry names (CPU generator seeded seed + 1, or the
Brownian tree seeded with the seed), so the test also checks that each sampler draws its noise
where ComfyUI draws it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffmesh.sampling.model_sampling import FlowModelSampling, ModelSampling
from diffmesh.sampling.noise import CPUNoiseSampler, brownian_for_sigmas
from diffmesh.sampling.samplers import SAMPLER_NAMES, SAMPLERS

from .gaussian import GaussianDenoiser

DATA = Path(__file__).resolve().parents[2] / "data" / "samplers" / "comfyui_trajectories.safetensors"


@pytest.fixture(scope="module")
def recorded():
    with safe_open(str(DATA), "pt") as f:
        meta = json.loads(f.metadata()["meta"])
    return load_file(str(DATA)), meta


def run_sampler(name, kind, tensors, case):
    ms = ModelSampling("eps") if kind == "eps" else FlowModelSampling("shift", case["shift"])
    model = GaussianDenoiser(ms, tensors[f"{kind}/mean"], case["std"], tensors[f"{kind}/uncond_mean"],
                             cfg=case["cfg"], wobble=case["wobble"])
    x, sigmas = tensors[f"{kind}/x_init"].clone(), tensors[f"{kind}/sigmas"].clone()
    spec = SAMPLERS[name]
    noise_sampler = {"cpu": lambda: CPUNoiseSampler(x, case["seed"]),
                     "brownian": lambda: brownian_for_sigmas(x, sigmas, case["seed"]),
                     "none": lambda: None}[spec.noise]()
    steps = []
    out = spec.fn(model, x, sigmas, extra_args={"seed": case["seed"]}, callback=lambda i: steps.append(i["denoised"]),
                  noise_sampler=noise_sampler, **spec.options)
    return out, torch.stack(steps)


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("kind", ["eps", "flow"])
@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_sampler_matches_comfyui(recorded, name, kind):
    tensors, meta = recorded
    out, steps = run_sampler(name, kind, tensors, meta["cases"][kind])
    want, want_steps = tensors[f"{kind}/{name}/x"], tensors[f"{kind}/{name}/denoised"]
    assert rel_err(out, want) < 1e-5, (name, kind, rel_err(out, want))
    assert steps.shape == want_steps.shape
    assert rel_err(steps, want_steps) < 1e-5
