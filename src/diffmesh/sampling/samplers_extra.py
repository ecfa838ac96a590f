"""Cheaper extra samplers of ComfyUI's list: CFG++ variants, iPNDM, Heun++, gradient estimation,
res_multistep. Same contract as `samplers.py`. CFG++ samplers need the uncond prediction, which
the denoiser keeps in `model.last_uncond` once `model.keep_uncond` is set."""

from __future__ import annotations

import torch

from .samplers_k import _cb, get_ancestral_step, half_log_snr, is_flow, to_d


def _want_uncond(model) -> None:
    model.keep_uncond = True    # CFG++ needs the uncond pass even when cfg == 1


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                                  eta=1.0, s_noise=1.0):
    """CFG++ (Chung et al. 2024): step with the guided x0 but renoise along the uncond direction."""
    _want_uncond(model)
    flow = is_flow(model)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond_denoised = model.last_uncond
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        alpha_s = sigmas[i] * half_log_snr(sigmas[i], flow).exp()      # 1 for eps models, 1 - sigma for flow
        alpha_t = sigmas[i + 1] * half_log_snr(sigmas[i + 1], flow).exp()
        d = to_d(x, sigmas[i], alpha_s * uncond_denoised)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i] / alpha_s, sigmas[i + 1] / alpha_t, eta=eta)
        sigma_down = alpha_t * sigma_down
        x = alpha_t * denoised + sigma_down * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Deterministic CFG++ Euler (eta = 0)."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args, callback, None, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver++(2M) with CFG++ renoising."""
    _want_uncond(model)
    s_in = x.new_ones([x.shape[0]])
    old_uncond_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        uncond_denoised = model.last_uncond
        _cb(callback, x, i, sigmas[i], denoised)
        t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
        h = t_next - t
        if old_uncond_denoised is None or sigmas[i + 1] == 0:
            denoised_mix = -torch.exp(-h) * uncond_denoised
        else:
            h_last = t - sigmas[i - 1].log().neg()
            r = h_last / h
            denoised_mix = -torch.exp(-h) * uncond_denoised - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond_denoised)
        x = denoised + denoised_mix + torch.exp(-h) * x
        old_uncond_denoised = uncond_denoised
    return x


@torch.no_grad()
def sample_heunpp2(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Heun++ (sd-webui-samplers-scheduler, MIT): up to three evaluations averaged with sigma weights."""
    s_in = x.new_ones([x.shape[0]])
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            w = 2 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w1 = 1 - w2
            x = x + (d * w1 + d_2 * w2) * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            dt_2 = sigmas[i + 2] - sigmas[i + 1]
            x_3 = x_2 + d_2 * dt_2
            denoised_3 = model(x_3, sigmas[i + 2] * s_in)
            d_3 = to_d(x_3, sigmas[i + 2], denoised_3)
            w = 3 * sigmas[0]
            w2 = sigmas[i + 1] / w
            w3 = sigmas[i + 2] / w
            w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_ipndm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, max_order=4):
    """Improved PNDM (Zhang & Chen 2023, DEIS paper): fixed Adams-Bashforth weights up to order 4."""
    s_in = x.new_ones([x.shape[0]])
    x_next = x
    buffer_model = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur * s_in)
        _cb(callback, x_cur, i, sigmas[i], denoised)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x_next = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        else:
            x_next = x_cur + (t_next - t_cur) * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2]
                                                 - 9 * buffer_model[-3]) / 24
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x_next


@torch.no_grad()
def sample_gradient_estimation(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None,
                               ge_gamma=2.0, cfg_pp=False):
    """Permenter & Yuan 2024, "Interpreting and improving diffusion models from an optimization
    perspective": Euler plus a momentum-like correction from the previous direction."""
    if cfg_pp:
        _want_uncond(model)
    s_in = x.new_ones([x.shape[0]])
    old_d = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], model.last_uncond if cfg_pp else denoised)
        _cb(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sigmas[i + 1] if cfg_pp else x + d * dt
            if i >= 1:
                d_bar = (ge_gamma - 1) * (d - old_d)
                x = x + d_bar * dt
        old_d = d
    return x


@torch.no_grad()
def sample_gradient_estimation_cfg_pp(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, ge_gamma=2.0):
    return sample_gradient_estimation(model, x, sigmas, extra_args, callback, None, ge_gamma=ge_gamma, cfg_pp=True)


# name -> (function, noise kind); turned into SamplerSpec entries by samplers.py
EXTRA_SAMPLERS = {
    "euler_cfg_pp": (sample_euler_cfg_pp, "none"),
    "euler_ancestral_cfg_pp": (sample_euler_ancestral_cfg_pp, "cpu"),
    "dpmpp_2m_cfg_pp": (sample_dpmpp_2m_cfg_pp, "none"),
    "heunpp2": (sample_heunpp2, "none"),
    "ipndm": (sample_ipndm, "none"),
    "gradient_estimation": (sample_gradient_estimation, "none"),
    "gradient_estimation_cfg_pp": (sample_gradient_estimation_cfg_pp, "none"),
}
