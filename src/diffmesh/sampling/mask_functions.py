"""Denoise-mask functions: a MODEL option that reshapes the inpaint mask at every step.

ComfyUI keeps one in `model_options["denoise_mask_function"]` and calls it before blending the
known latent in (`KSamplerX0Inpaint`). diffmesh carries it as plain data on the MODEL handle
(`ModelHandle.denoise_mask_fn`, e.g. ("differential", strength) from DifferentialDiffusion), so it
pickles to any worker; the sampler nodes move it into the `SampleJob` and the pipeline turns it
into the callable the denoiser applies.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch


def split_mask_fn(model):
    """(handle without the option, the option): workers key loaded UNets by handle, and a mask
    function must not make a second copy of the same weights load."""
    spec = getattr(model, "denoise_mask_fn", None)
    return (model if spec is None else replace(model, denoise_mask_fn=None)), spec


def differential(sigma: torch.Tensor, mask: torch.Tensor, sigmas: torch.Tensor, model_sampling,
                 strength: float = 1.0) -> torch.Tensor:
    """Differential Diffusion (Levin & Fried 2023): a pixel is denoised while its mask value is at
    least the step's progress threshold, (t - t_end) / (t_start - t_end) in model timesteps; with
    strength < 1 the binary mask is blended with the soft one."""
    sigma_to = model_sampling.sigma_min
    if sigmas[-1] > sigma_to:
        sigma_to = sigmas[-1]
    ts_from = model_sampling.timestep(sigmas[0])
    ts_to = model_sampling.timestep(sigma_to)
    current = model_sampling.timestep(sigma[0])
    threshold = (current - ts_to) / (ts_from - ts_to)
    binary = (mask >= threshold).to(mask.dtype)
    if strength and strength < 1:
        return strength * binary + (1 - strength) * mask
    return binary


def build(spec: tuple | None, sigmas: torch.Tensor, model_sampling) -> Callable | None:
    """The job's mask-function spec -> `fn(sigma, mask) -> mask` for `sampling.guidance.Denoiser`."""
    if spec is None:
        return None
    kind, *args = spec
    if kind == "differential":
        full = sigmas.detach().clone()
        return lambda sigma, mask: differential(sigma, mask, full, model_sampling, *args)
    raise ValueError(f"unknown denoise mask function {kind!r} on the MODEL; the nodes that set one "
                     "(DifferentialDiffusion) make ('differential', strength)")
