"""Exponential-integrator samplers of ComfyUI's list: RES multistep, SEEDS, exponential Heun,
ER-SDE and DPM-Solver++(2S) with CFG++. Same contract as `samplers.py`.

They integrate the linear part of the diffusion ODE/SDE exactly in half-log-SNR time lambda and
approximate only the x0 prediction, which is why they stay accurate at few steps. Those that step in
lambda read it from the model's sampling (`half_log_snr`), so flow models get lambda = logit(1 - sigma)
and a first sigma just below 1, as in ComfyUI.
"""

from __future__ import annotations

import torch

from .samplers_extra import _want_uncond
from .samplers_k import (_cb, get_ancestral_step, half_log_snr, is_flow, offset_first_sigma,
                         sigma_fn, sigma_of_half_log_snr, t_fn, to_d)


def _need_noise(noise_sampler, name: str):
    if noise_sampler is None:
        raise ValueError(f"sampler {name} was asked for noise (eta > 0) but got no noise sampler; "
                         "run it through the sampling pipeline or pass noise_sampler")
    return noise_sampler


def ei_h_phi_1(h):
    """h * phi_1(h) = e^h - 1 of the exponential integrators."""
    return torch.expm1(h)


def ei_h_phi_2(h):
    """h * phi_2(h) = (e^h - 1 - h) / h."""
    return (torch.expm1(h) - h) / h


@torch.no_grad()
def res_multistep(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0, eta=1.0,
                  cfg_pp=False):
    """RES second-order multistep (Zhang et al. 2023, "Improved order analysis and design of exponential
    integrator for diffusion models", arXiv:2308.02157): the previous x0 gives the phi_2 correction.
    With eta > 0 each step stops at sigma_down and adds ancestral noise; with cfg_pp the CFG++ form
    (Chung et al. 2024) renoises along the uncond prediction."""
    if cfg_pp:
        _want_uncond(model)
    s_in = x.new_ones([x.shape[0]])

    def phi1_fn(t):
        return torch.expm1(t) / t

    def phi2_fn(t):
        return (phi1_fn(t) - 1.0) / t

    old_sigma_down, old_denoised = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond = model.last_uncond if cfg_pp else None
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:
                x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
            else:
                x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_old = t_fn(sigmas[i]), t_fn(old_sigma_down)
            t_next, t_prev = t_fn(sigma_down), t_fn(sigmas[i - 1])
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1_val, phi2_val = phi1_fn(-h), phi2_fn(-h)
            b1 = torch.nan_to_num(phi1_val - phi2_val / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2_val / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
                x = sigma_fn(h) * x + h * (b1 * uncond + b2 * old_denoised)
            else:
                x = sigma_fn(h) * x + h * (b1 * denoised + b2 * old_denoised)
        if sigmas[i + 1] > 0 and sigma_up > 0:     # ComfyUI adds noise * 0 when eta = 0: same numbers
            x = x + _need_noise(noise_sampler, "res_multistep")(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        old_denoised = uncond if cfg_pp else denoised
        old_sigma_down = sigma_down
    return x


def sample_res_multistep(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0):
    return res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, s_noise=s_noise, eta=0.0)


def sample_res_multistep_cfg_pp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0):
    return res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, s_noise=s_noise, eta=0.0, cfg_pp=True)


def sample_res_multistep_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                                   s_noise=1.0):
    return res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, s_noise=s_noise, eta=eta)


def sample_res_multistep_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                                          eta=1.0, s_noise=1.0):
    return res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, s_noise=s_noise, eta=eta, cfg_pp=True)


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                                     s_noise=1.0):
    """DPM-Solver++(2S) ancestral (Lu et al. 2022b) with CFG++ (Chung et al. 2024): both stages start
    from x moved by (guided - uncond), so the renoising follows the uncond direction."""
    _want_uncond(model)
    s_in = x.new_ones([x.shape[0]])

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond = model.last_uncond
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised + to_d(x, sigmas[i], uncond) * sigma_down
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * (x + (denoised - uncond)) - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, sigma_fn(s) * s_in)
            uncond = model.last_uncond      # ComfyUI's full step shifts x by the second call's uncond
            x = (sigma_fn(t_next) / sigma_fn(t)) * (x + (denoised - uncond)) - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _er_sde_noise_scaler(x):
    return x * ((x ** 0.3).exp() + 10.0)


@torch.no_grad()
def sample_er_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0,
                  noise_scaler=None, max_stage=3):
    """ER-SDE-Solver-3 (Cui et al. 2023, "Elucidating the solution space of extended reverse-time SDEs",
    arXiv:2309.06169), VP form: up to third order from the previous x0 predictions, the integrals of
    the noise scaler taken numerically on 200 points."""
    noise_scaler = _er_sde_noise_scaler if noise_scaler is None else noise_scaler
    num_points = 200.0
    point_indice = torch.arange(0, num_points, dtype=torch.float32, device=x.device)
    s_in = x.new_ones([x.shape[0]])
    sigmas = offset_first_sigma(sigmas, model.model_sampling)
    er_lambdas = half_log_snr(sigmas, is_flow(model)).neg().exp()    # sigma_t / alpha_t
    old_denoised, old_denoised_d = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        stage_used = min(max_stage, i + 1)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            er_lambda_s, er_lambda_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = sigmas[i] / er_lambda_s
            alpha_t = sigmas[i + 1] / er_lambda_t
            r_alpha = alpha_t / alpha_s
            r = noise_scaler(er_lambda_t) / noise_scaler(er_lambda_s)
            x = r_alpha * r * x + alpha_t * (1 - r) * denoised          # stage 1
            if stage_used >= 2:
                dt = er_lambda_t - er_lambda_s
                step = -dt / num_points
                lambda_pos = er_lambda_t + point_indice * step
                scaled_pos = noise_scaler(lambda_pos)
                s = torch.sum(1 / scaled_pos) * step
                denoised_d = (denoised - old_denoised) / (er_lambda_s - er_lambdas[i - 1])
                x = x + alpha_t * (dt + s * noise_scaler(er_lambda_t)) * denoised_d
                if stage_used >= 3:
                    s_u = torch.sum((lambda_pos - er_lambda_s) / scaled_pos) * step
                    denoised_u = (denoised_d - old_denoised_d) / ((er_lambda_s - er_lambdas[i - 2]) / 2)
                    x = x + alpha_t * ((dt ** 2) / 2 + s_u * noise_scaler(er_lambda_t)) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                scale = (er_lambda_t ** 2 - er_lambda_s ** 2 * r ** 2).sqrt().nan_to_num(nan=0.0)
                x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * scale
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_seeds_2(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0, r=0.5,
                   solver_type="phi_1"):
    """SEEDS-2 (Gonzalez et al. 2023, "SEEDS: Exponential SDE solvers for fast high-quality sampling
    from diffusion models", arXiv:2305.14267), VP data prediction: one intermediate stage at r*h; the
    stage noise is carried into the full step so both segments share one Brownian path."""
    if solver_type not in {"phi_1", "phi_2"}:
        raise ValueError(f"seeds_2 solver_type must be 'phi_1' or 'phi_2', got {solver_type!r}")
    inject_noise = eta > 0 and s_noise > 0
    flow = is_flow(model)
    s_in = x.new_ones([x.shape[0]])
    sigmas = offset_first_sigma(sigmas, model.model_sampling)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = sigma_of_half_log_snr(lambda_s_1, flow)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        x_2 = sigma_s_1 / sigmas[i] * (-r * h * eta).exp() * x - alpha_s_1 * ei_h_phi_1(-r * h_eta) * denoised
        if inject_noise:
            sde_noise = (-2 * r * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)
        if solver_type == "phi_1":
            denoised_d = torch.lerp(denoised, denoised_2, fac)
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * ei_h_phi_1(-h_eta) * denoised_d
        else:
            b2 = ei_h_phi_2(-h_eta) / r
            b1 = ei_h_phi_1(-h_eta) - b2
            x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b2 * denoised_2)
        if inject_noise:
            # r = 1 makes the second segment empty, but its draw is still taken (ComfyUI's stream)
            segment_factor = (r - 1) * h * eta
            sde_noise = sde_noise * segment_factor.exp()
            sde_noise = sde_noise + segment_factor.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_1, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


@torch.no_grad()
def sample_seeds_3(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0,
                   r_1=1.0 / 3, r_2=2.0 / 3):
    """SEEDS-3 (Gonzalez et al. 2023, arXiv:2305.14267): third-order stochastic exponential solver with
    stages at r_1*h and r_2*h, the Brownian path shared across the three segments."""
    inject_noise = eta > 0 and s_noise > 0
    flow = is_flow(model)
    s_in = x.new_ones([x.shape[0]])
    sigmas = offset_first_sigma(sigmas, model.model_sampling)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r_1)
        lambda_s_2 = torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s_1, sigma_s_2 = sigma_of_half_log_snr(lambda_s_1, flow), sigma_of_half_log_snr(lambda_s_2, flow)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_s_2 = sigma_s_2 * lambda_s_2.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        x_2 = sigma_s_1 / sigmas[i] * (-r_1 * h * eta).exp() * x - alpha_s_1 * ei_h_phi_1(-r_1 * h_eta) * denoised
        if inject_noise:
            sde_noise = (-2 * r_1 * h * eta).expm1().neg().sqrt() * noise_sampler(sigmas[i], sigma_s_1)
            x_2 = x_2 + sde_noise * sigma_s_1 * s_noise
        denoised_2 = model(x_2, sigma_s_1 * s_in)
        a3_2 = r_2 / r_1 * ei_h_phi_2(-r_2 * h_eta)
        a3_1 = ei_h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = sigma_s_2 / sigmas[i] * (-r_2 * h * eta).exp() * x - alpha_s_2 * (a3_1 * denoised + a3_2 * denoised_2)
        if inject_noise:
            segment_factor = (r_1 - r_2) * h * eta
            sde_noise = sde_noise * segment_factor.exp()
            sde_noise = sde_noise + segment_factor.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_1, sigma_s_2)
            x_3 = x_3 + sde_noise * sigma_s_2 * s_noise
        denoised_3 = model(x_3, sigma_s_2 * s_in)
        b3 = ei_h_phi_2(-h_eta) / r_2
        b1 = ei_h_phi_1(-h_eta) - b3
        x = sigmas[i + 1] / sigmas[i] * (-h * eta).exp() * x - alpha_t * (b1 * denoised + b3 * denoised_3)
        if inject_noise:
            segment_factor = (r_2 - 1) * h * eta
            sde_noise = sde_noise * segment_factor.exp()
            sde_noise = sde_noise + segment_factor.mul(2).expm1().neg().sqrt() * noise_sampler(sigma_s_2, sigmas[i + 1])
            x = x + sde_noise * sigmas[i + 1] * s_noise
    return x


def sample_exp_heun_2_x0(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, solver_type="phi_2"):
    """Exponential Heun (second order, two calls per step) in x0 prediction and half-log-SNR time:
    SEEDS-2 with the stage at the step's end (r = 1) and no noise."""
    return sample_seeds_2(model, x, sigmas, extra_args, callback, None, eta=0.0, s_noise=0.0, r=1.0,
                          solver_type=solver_type)


def sample_exp_heun_2_x0_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0,
                             s_noise=1.0, solver_type="phi_2"):
    """Stochastic exponential Heun: SEEDS-2 with r = 1."""
    return sample_seeds_2(model, x, sigmas, extra_args, callback, noise_sampler, eta=eta, s_noise=s_noise, r=1.0,
                          solver_type=solver_type)
