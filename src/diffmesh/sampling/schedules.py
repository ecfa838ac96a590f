"""Sigma schedules: which noise levels a sampler visits, and KSampler's step adjustments.

Every schedule is one function `schedule_x(model_sampling, steps) -> (steps+1,) float32 tensor`
(descending, normally ending in 0) plus one entry of `SCHEDULERS`; `SCHEDULER_NAMES` keeps
ComfyUI's order because the UI lists and validates scheduler names by it. All values follow
ComfyUI's arithmetic (float32 where it uses float32) so schedules match it to the last bit.
"""

from __future__ import annotations

import math

import numpy
import torch


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def schedule_simple(ms, steps: int) -> torch.Tensor:
    """Evenly strided entries of the model's own sigma table (ComfyUI "simple")."""
    ss = len(ms.sigmas) / steps
    sigs = [float(ms.sigmas[-(1 + int(x * ss))]) for x in range(steps)]
    return torch.FloatTensor(sigs + [0.0])


def _normal(ms, steps: int, sgm: bool) -> torch.Tensor:
    start = ms.timestep(ms.sigma_max)
    end = ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(ts)) for ts in timesteps]
    if append_zero:
        sigs.append(0.0)
    return torch.FloatTensor(sigs)


def schedule_normal(ms, steps: int) -> torch.Tensor:
    """Timesteps uniform in [T-1, 0] (the original LDM/DDIM "uniform" spacing), interpolated in log sigma."""
    return _normal(ms, steps, sgm=False)


def schedule_sgm_uniform(ms, steps: int) -> torch.Tensor:
    """SGM (Stability's generative-models repo) uniform spacing: n+1 points, the last dropped."""
    return _normal(ms, steps, sgm=True)


def schedule_karras(ms, steps: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022 (EDM) eq. 5: uniform in sigma^(1/rho), which concentrates steps at low noise."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas)


def schedule_exponential(ms, steps: int) -> torch.Tensor:
    """Uniform in log sigma (k-diffusion's exponential schedule)."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), steps).exp()
    return _append_zero(sigmas)


def schedule_ddim_uniform(ms, steps: int) -> torch.Tensor:
    """DDIM's (Song et al. 2021) uniform timestep stride starting from timestep 1."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs = []
    else:
        sigs = [0.0]
    ss = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += ss
    return torch.FloatTensor(sigs[::-1])


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """Regularised incomplete beta function I_x(a, b) in float64."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    front = math.exp(ln_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def beta_ppf(u: float, a: float, b: float) -> float:
    """Inverse of `beta_cdf` by bisection (monotone, so exact to float64 resolution)."""
    if u <= 0.0:
        return 0.0
    if u >= 1.0:
        return 1.0
    if a == b and u == 0.5:
        return 0.5  # exact median of a symmetric Beta; bisection would land one ulp low of it
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if beta_cdf(mid, a, b) < u:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def schedule_beta(ms, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Lee et al. 2024, "Improved noise schedule for diffusion training" (arXiv 2407.12173):
    timesteps at Beta(0.6, 0.6) quantiles, dense at both ends of the trajectory."""
    total_timesteps = len(ms.sigmas) - 1
    us = 1 - numpy.linspace(0, 1, steps, endpoint=False)
    ts = numpy.rint(numpy.array([beta_ppf(float(u), alpha, beta) for u in us]) * total_timesteps)
    sigs = []
    last_t = -1
    for t in ts:
        if t != last_t:
            sigs.append(float(ms.sigmas[int(t)]))
        last_t = t
    sigs.append(0.0)
    return torch.FloatTensor(sigs)


def schedule_linear_quadratic(ms, steps: int, threshold_noise: float = 0.025, linear_steps=None) -> torch.Tensor:
    """Genmo Mochi's schedule: linear for the first half, quadratic after, scaled by sigma_max."""
    if steps == 1:
        sigma_schedule = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear_sigma_schedule = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        threshold_noise_step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = threshold_noise_step_diff / (linear_steps * quadratic_steps ** 2)
        linear_coef = threshold_noise / linear_steps - 2 * threshold_noise_step_diff / (quadratic_steps ** 2)
        const = quadratic_coef * (linear_steps ** 2)
        quadratic_sigma_schedule = [quadratic_coef * (i ** 2) + linear_coef * i + const
                                    for i in range(linear_steps, steps)]
        sigma_schedule = linear_sigma_schedule + quadratic_sigma_schedule + [1.0]
        sigma_schedule = [1.0 - x for x in sigma_schedule]
    return torch.FloatTensor(sigma_schedule) * ms.sigma_max.cpu()


def schedule_kl_optimal(ms, steps: int) -> torch.Tensor:
    """Sabour et al. 2024, "Align Your Steps": KL-optimal steps are uniform in atan(sigma)."""
    sigma_min, sigma_max = float(ms.sigma_min), float(ms.sigma_max)
    adj_idxs = torch.arange(steps, dtype=torch.float).div_(steps - 1)
    sigmas = adj_idxs.new_zeros(steps + 1)
    sigmas[:-1] = (adj_idxs * math.atan(sigma_min) + (1 - adj_idxs) * math.atan(sigma_max)).tan_()
    return sigmas


SCHEDULERS = {
    "simple": schedule_simple,
    "sgm_uniform": schedule_sgm_uniform,
    "karras": schedule_karras,
    "exponential": schedule_exponential,
    "ddim_uniform": schedule_ddim_uniform,
    "beta": schedule_beta,
    "normal": schedule_normal,
    "linear_quadratic": schedule_linear_quadratic,
    "kl_optimal": schedule_kl_optimal,
}
SCHEDULER_NAMES = list(SCHEDULERS)

# Samplers whose last step is a second-order step to sigma 0 that cannot be taken: the schedule is
# computed for steps+1 and the penultimate sigma dropped, keeping steps+1 values.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset(("dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"))


def calculate_sigmas(model_sampling, scheduler: str, steps: int) -> torch.Tensor:
    try:
        fn = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_NAMES}") from None
    return fn(model_sampling, int(steps))


def _sampler_sigmas(model_sampling, scheduler: str, sampler_name: str, steps: int) -> torch.Tensor:
    discard = sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS
    sigmas = calculate_sigmas(model_sampling, scheduler, steps + 1 if discard else steps)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def ksampler_sigmas(model_sampling, scheduler: str, sampler_name: str, steps: int,
                    denoise: float | None = 1.0) -> torch.Tensor:
    """Sigmas of ComfyUI's KSampler: partial denoise keeps the tail of a longer schedule.

    Unknown names fall back to the first list entry, as ComfyUI does (validation normally
    rejects them first). An empty result means: return the input latent unchanged."""
    from .samplers import SAMPLER_NAMES

    if scheduler not in SCHEDULERS:
        scheduler = SCHEDULER_NAMES[0]
    if sampler_name not in SAMPLER_NAMES:
        sampler_name = SAMPLER_NAMES[0]
    if denoise is None or denoise > 0.9999:
        return _sampler_sigmas(model_sampling, scheduler, sampler_name, steps)
    if denoise <= 0.0:
        return torch.FloatTensor([])
    new_steps = int(steps / denoise)
    sigmas = _sampler_sigmas(model_sampling, scheduler, sampler_name, new_steps)
    return sigmas[-(steps + 1):]


def advanced_sigmas(model_sampling, scheduler: str, sampler_name: str, steps: int,
                    start_at_step: int | None, end_at_step: int | None, force_full_denoise: bool,
                    denoise: float | None = 1.0) -> torch.Tensor:
    """KSamplerAdvanced's window of the schedule. Empty tensor = return the latent unchanged."""
    sigmas = ksampler_sigmas(model_sampling, scheduler, sampler_name, steps, denoise).clone()
    if end_at_step is not None and end_at_step < len(sigmas) - 1:
        sigmas = sigmas[:end_at_step + 1]
        if force_full_denoise:
            sigmas[-1] = 0
    if start_at_step is not None:
        if start_at_step < len(sigmas) - 1:
            sigmas = sigmas[start_at_step:]
        else:
            return torch.FloatTensor([])
    return sigmas
