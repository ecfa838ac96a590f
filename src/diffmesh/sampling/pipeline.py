"""Run one `SampleJob` on a worker: ComfyUI's KSampler pipeline after noise and sigmas are known.

Steps (spec §6.1 4-7): scale the latent into diffusion space (unless it is all zeros), build the
initial x with the model's noise scaling, run the sampler with the guided denoiser, scale back,
return float32 on the CPU. Per-step noise is drawn on the CPU for the full batch and sliced to
`job.batch_slice`, so a batch split over devices reproduces the single-device numbers.
"""

from __future__ import annotations

from typing import Callable

import torch

from .conds import repeat_to_batch_size
from .guidance import Denoiser
from .mask_functions import build as build_mask_function
from .noise import CPUNoiseSampler, brownian_for_sigmas, inpaint_noise
from .samplers import get_sampler


def prepare_mask(noise_mask: torch.Tensor, shape, device) -> torch.Tensor:
    """Inpaint mask (B,H,W) / (H,W) / (B,1,H,W) -> (B,C,h,w) at latent size (bilinear), repeated to the batch;
    for a video latent (B,C,T,h,w), a (B,1,T,h,w) mask (or frames stacked as (T,h,w)) -> trilinear, as
    ComfyUI's reshape_mask."""
    if len(shape) == 5:
        mask = noise_mask.float()
        if mask.ndim < 5:
            mask = mask.reshape((1, 1, -1, mask.shape[-2], mask.shape[-1]))
        mask = torch.nn.functional.interpolate(mask, size=tuple(shape[2:]), mode="trilinear")
        if mask.shape[1] < shape[1]:
            mask = mask.repeat((1, shape[1], 1, 1, 1))[:, :shape[1]]
        return repeat_to_batch_size(mask, shape[0]).to(device)
    mask = noise_mask.reshape((-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])).float()
    mask = torch.nn.functional.interpolate(mask, size=(shape[2], shape[3]), mode="bilinear")
    if mask.shape[1] < shape[1]:
        mask = mask.repeat((1, shape[1], 1, 1))[:, :shape[1]]
    mask = repeat_to_batch_size(mask, shape[0])
    return mask.to(device)


def _noise_sampler(kind: str, x: torch.Tensor, sigmas: torch.Tensor, seed: int, batch_slice):
    if kind == "cpu":
        return CPUNoiseSampler(x, seed, batch_slice)
    if kind == "brownian" and len(sigmas) > 1 and bool((sigmas > 0).any()):
        return brownian_for_sigmas(x, sigmas, seed, batch_slice)
    return None


def _controls(networks, model_sampling, batch_slice):
    if not networks:
        return None
    from .control import ControlRunner

    return ControlRunner(networks, model_sampling, batch_slice)


def run_sample_job(model, job, on_step: Callable[[int, int, torch.Tensor], None] | None = None,
                   control_networks=None) -> torch.Tensor:
    """Denoise `job.latent` with `model` (a DiffusionModel) and return the new unscaled latent.

    `on_step(step, total, x0)` is called after every step with step = 1..total and the step's x0
    estimate in diffusion (scaled) space, for progress and previews; an exception raised there
    (an interrupt) propagates out of this call. `control_networks` maps each CONTROL_NET the
    conditioning uses (`sampling.control.control_refs`) to its network on this device."""
    latent = job.latent.to(torch.float32)
    sigmas = job.sigmas
    if sigmas.numel() == 0:
        return latent.to("cpu")
    device = torch.device(getattr(model, "device", "cpu") or "cpu")
    fmt, ms = model.latent_format, model.model_sampling
    channels = getattr(fmt, "channels", latent.shape[1])
    if channels != latent.shape[1] and torch.count_nonzero(latent) == 0:
        latent = repeat_to_batch_size(latent, channels, dim=1)
    if getattr(fmt, "dimensions", 2) == 3 and latent.ndim == 4:
        latent = latent.unsqueeze(2)            # an image latent for a video-format model (Qwen-Image): one frame

    noise = job.noise.to(device=device, dtype=torch.float32)
    if noise.shape[1] != latent.shape[1]:
        noise = repeat_to_batch_size(noise, latent.shape[1], dim=1)
    if noise.ndim == 4 and latent.ndim == 5:    # drawn on the 4-D latent: same values in the same order
        noise = noise.unsqueeze(2)
    latent_image = latent.to(device=device)
    sigmas = sigmas.to(device)
    if torch.count_nonzero(latent_image) > 0:   # an empty latent is not shifted
        latent_image = fmt.process_in(latent_image)

    spec = get_sampler(job.sampler_name)
    batch_slice = job.batch_slice
    denoise_mask = None
    model_noise = noise
    if job.noise_mask is not None:
        mask_rows = latent_image.shape if batch_slice is None else (batch_slice[2],) + tuple(latent_image.shape[1:])
        denoise_mask = prepare_mask(job.noise_mask, mask_rows, device)
        if batch_slice is not None:
            denoise_mask = denoise_mask[batch_slice[0]:batch_slice[1]]
        if spec.inpaint_random_noise:
            model_noise = inpaint_noise(latent_image.shape, job.seed, batch_slice).to(device)

    denoiser = Denoiser(model, job.positive, job.negative, job.cfg, tuple(latent_image.shape),
                        batch_slice=batch_slice, cfg_part=job.cfg_part, exchange=job.exchange,
                        latent_image=latent_image, noise=model_noise, denoise_mask=denoise_mask,
                        controls=_controls(control_networks, ms, batch_slice), seed=job.seed,
                        mask_function=build_mask_function(getattr(job, "denoise_mask_fn", None), sigmas, ms))
    x = ms.noise_scaling(sigmas[0], noise, latent_image, ms.is_max_denoise(sigmas))
    noise_sampler = _noise_sampler(spec.noise, x, sigmas, job.seed, batch_slice)
    total = len(sigmas) - 1

    def callback(info):
        if on_step is not None:
            on_step(int(info["i"]) + 1, total, info["denoised"])

    options = {**spec.options, **(job.sampler_options or {})}
    samples = spec.fn(denoiser, x, sigmas, extra_args={"seed": job.seed}, callback=callback,
                      noise_sampler=noise_sampler, **options)
    # a flow schedule stopped early (sigma_end > 0) leaves (1 - sigma) x0 + sigma noise: ComfyUI divides by 1 - sigma
    samples = ms.inverse_noise_scaling(sigmas[-1], samples)
    out = fmt.process_out(samples.to(torch.float32))
    return out.to(device="cpu", dtype=torch.float32)
