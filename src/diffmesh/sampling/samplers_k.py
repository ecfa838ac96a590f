"""The main k-diffusion samplers (see `samplers.py` for the contract shared by all of them)."""

from __future__ import annotations

import numpy
import torch


def to_d(x, sigma, denoised):
    """Karras ODE derivative dx/dsigma = (x - D(x)) / sigma."""
    return (x - denoised) / sigma


def sigma_fn(t):
    """sigma of the DPM-Solver time t = -log(sigma) (Lu et al. 2022)."""
    return t.neg().exp()


def t_fn(sigma):
    """DPM-Solver time t = -log(sigma) of a sigma."""
    return sigma.log().neg()


def get_ancestral_step(sigma_from, sigma_to, eta=1.0):
    """Split a step into a deterministic part to sigma_down and fresh noise of size sigma_up."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def is_flow(model) -> bool:
    """True for rectified-flow models (ComfyUI's CONST sampling): x_sigma = (1 - sigma) x0 + sigma noise."""
    return model.model_sampling.prediction_type == "flow"


def half_log_snr(sigma, flow: bool):
    """lambda = log(alpha / sigma): -log sigma for the VE/eps space, logit(1 - sigma) for flow models.
    Exponential-integrator samplers step in lambda, so this is where the model type enters them."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_of_half_log_snr(lam, flow: bool):
    """Inverse of `half_log_snr`."""
    return lam.neg().sigmoid() if flow else lam.neg().exp()


def offset_first_sigma(sigmas, model_sampling, percent=1e-4):
    """A flow schedule starting at sigma 1 has lambda = -inf there; start at percent 1e-4 instead (as ComfyUI)."""
    if len(sigmas) <= 1:
        return sigmas
    if model_sampling.prediction_type == "flow" and sigmas[0] >= 1:
        sigmas = sigmas.clone()
        sigmas[0] = model_sampling.percent_to_sigma(percent)
    return sigmas


def rf_ancestral_step(sigma, sigma_next, eta):
    """Ancestral split for flow models: deterministic step to sigma_down, then scale by
    alpha_next / alpha_down and add noise of size renoise so the marginal is that of sigma_next."""
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_ip1 = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise = (sigma_next ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
    return sigma_down, alpha_ip1 / alpha_down, renoise


def _cb(callback, x, i, sigma, denoised, sigma_hat=None):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat,
                  "denoised": denoised})


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Karras et al. 2022, Algorithm 2 with Euler steps (first order, one model call per step)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _cb(callback, x, i, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """Euler steps to sigma_down plus fresh noise to sigma_{i+1} (Song et al. 2021 ancestral sampling).
    Flow models take the rectified-flow form of the same split (ComfyUI's euler_ancestral_RF)."""
    if is_flow(model):
        return _sample_euler_ancestral_rf(model, x, sigmas, callback, noise_sampler, eta, s_noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            dt = sigma_down - sigmas[i]
            x = x + d * dt + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _sample_euler_ancestral_rf(model, x, sigmas, callback, noise_sampler, eta, s_noise):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        sigma_down, alpha_ratio, renoise = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ratio = sigma_down / sigmas[i]
        x = ratio * x + (1 - ratio) * denoised
        if eta > 0:
            x = alpha_ratio * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Karras et al. 2022, Algorithm 2: Heun's second-order method (Euler on the last step)."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            d_prime = (d + d_2) / 2
            x = x + d_prime * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver-2 (Lu et al. 2022) midpoint in log sigma, in Karras' Algorithm 2 form."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma_hat = sigmas[i]
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            dt_1 = sigma_mid - sigma_hat
            dt_2 = sigmas[i + 1] - sigma_hat
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver-2 steps to sigma_down plus ancestral noise (the rectified-flow split on flow models)."""
    flow = is_flow(model)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        if flow:
            sigma_down, alpha_ratio, sigma_up = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        else:
            sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _cb(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            dt_1 = sigma_mid - sigmas[i]
            dt_2 = sigma_down - sigmas[i]
            x_2 = x + d * dt_1
            denoised_2 = model(x_2, sigma_mid * s_in)
            d_2 = to_d(x_2, sigma_mid, denoised_2)
            x = x + d_2 * dt_2
            if flow:
                if eta > 0:     # at eta 0 the ratio is exactly 1, but renoise can be the root of -0.0 (NaN)
                    x = alpha_ratio * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
            else:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order, t, i, j):
    """Integral over [t_i, t_{i+1}] of the j-th Lagrange basis polynomial through t_i..t_{i-order+1}
    (exact Gauss-Legendre quadrature: the integrand is a polynomial of degree order - 1)."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")
    nodes, weights = numpy.polynomial.legendre.leggauss(order + 1)
    a, b = float(t[i]), float(t[i + 1])
    taus = 0.5 * (b - a) * nodes + 0.5 * (b + a)
    total = 0.0
    for tau, w in zip(taus, weights):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        total += w * prod
    return float(total * 0.5 * (b - a))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=4):
    """Linear multistep (Adams-Bashforth in sigma, variable step sizes) from k-diffusion."""
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy().astype(numpy.float64)
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        ds.append(d)
        if len(ds) > order:
            ds.pop(0)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
            x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(2S) single-step second order (Lu et al. 2022b) with ancestral noise."""
    if is_flow(model):
        return _sample_dpmpp_2s_ancestral_rf(model, x, sigmas, callback, noise_sampler, eta, s_noise)
    s_in = x.new_ones([x.shape[0]])

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            d = to_d(x, sigmas[i], denoised)
            x = x + d * (sigma_down - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, sigma_fn(s) * s_in)
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _sample_dpmpp_2s_ancestral_rf(model, x, sigmas, callback, noise_sampler, eta, s_noise):
    """DPM-Solver++(2S) for flow models: the midpoint in lambda = log((1 - sigma) / sigma), both
    stages as x0-interpolations (the flow ODE's exact form for a constant x0)."""
    s_in = x.new_ones([x.shape[0]])

    def sigma_fn(lam):
        return (lam.exp() + 1) ** -1

    def lambda_fn(sigma):
        return ((1 - sigma) / sigma).log()

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, alpha_ratio, renoise = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            if sigmas[i] == 1.0:
                sigma_s = 0.9999      # lambda(1) = -inf: ComfyUI's stand-in midpoint
            else:
                t_i, t_down = lambda_fn(sigmas[i]), lambda_fn(sigma_down)
                sigma_s = sigma_fn(t_i + 0.5 * (t_down - t_i))
            ratio_s = sigma_s / sigmas[i]
            u = ratio_s * x + (1 - ratio_s) * denoised
            denoised_2 = model(u, sigma_s * s_in)
            ratio_down = sigma_down / sigmas[i]
            x = ratio_down * x + (1 - ratio_down) * denoised_2
        if sigmas[i + 1] > 0 and eta > 0:
            x = alpha_ratio * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * renoise
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0, r=1 / 2):
    """DPM-Solver++ stochastic, two stages per step, Brownian-tree noise (k-diffusion); steps in
    half-log-SNR, so flow models get their own lambda and a first sigma below 1."""
    if len(sigmas) <= 1:
        return x
    s_in = x.new_ones([x.shape[0]])
    flow = is_flow(model)
    sigmas = offset_first_sigma(sigmas, model.model_sampling)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigmas[i], flow), half_log_snr(sigmas[i + 1], flow)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        fac = 1 / (2 * r)
        sigma_s_1 = sigma_of_half_log_snr(lambda_s_1, flow)
        alpha_s = sigmas[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigmas[i + 1] * lambda_t.exp()
        # stage 1
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        lambda_s_1_ = sd.log().neg()
        h_ = lambda_s_1_ - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise_sampler(sigmas[i], sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1 * s_in)
        # stage 2
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        lambda_t_ = sd.log().neg()
        h_ = lambda_t_ - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """DPM-Solver++(2M) (Lu et al. 2022b): second-order multistep in log sigma, one call per step."""
    s_in = x.new_ones([x.shape[0]])

    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def _sde_first_order_step(x, sigma, sigma_next, denoised, eta, flow):
    """First-order DPM-Solver++ SDE step in half-log-SNR time (Lu et al. 2022b). Both the 2M and the 3M
    SDE sampler start from it and add their multistep corrections, so it is written once; h, h_eta and
    alpha_t come back because those corrections and `_sde_add_noise` reuse them."""
    lambda_s, lambda_t = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
    h = lambda_t - lambda_s
    h_eta = h * (eta + 1)
    alpha_t = sigma_next * lambda_t.exp()
    x = sigma_next / sigma * (-h * eta).exp() * x + alpha_t * (-h_eta).expm1().neg() * denoised
    return x, h, h_eta, alpha_t


def _sde_add_noise(x, sigma, sigma_next, h, eta, s_noise, noise_sampler):
    """The SDE noise term that goes with `_sde_first_order_step`: its variance makes the step's
    marginal match sigma_next (skipped, noise sampler untouched, when eta or s_noise is 0)."""
    if eta > 0 and s_noise > 0:
        x = x + noise_sampler(sigma, sigma_next) * sigma_next * (-2 * h * eta).expm1().neg().sqrt() * s_noise
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0,
                        solver_type="midpoint"):
    """DPM-Solver++(2M) SDE (k-diffusion; Lu et al. 2022b) with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    s_in = x.new_ones([x.shape[0]])
    flow = is_flow(model)
    sigmas = offset_first_sigma(sigmas, model.model_sampling)
    old_denoised, h, h_last = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_first_order_step(x, sigmas[i], sigmas[i + 1], denoised, eta, flow)
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * ((-h_eta).expm1().neg() / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * (-h_eta).expm1().neg() * (1 / r) * (denoised - old_denoised)
            x = _sde_add_noise(x, sigmas[i], sigmas[i + 1], h, eta, s_noise, noise_sampler)
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE (k-diffusion): third-order multistep with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    s_in = x.new_ones([x.shape[0]])
    flow = is_flow(model)
    sigmas = offset_first_sigma(sigmas, model.model_sampling)
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            x, h, h_eta, alpha_t = _sde_first_order_step(x, sigmas[i], sigmas[i + 1], denoised, eta, flow)
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
            elif h_1 is not None:
                r = h_1 / h
                d = (denoised - denoised_1) / r
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + (alpha_t * phi_2) * d
            x = _sde_add_noise(x, sigmas[i], sigmas[i + 1], h, eta, s_noise, noise_sampler)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def _ddpm_step(x, sigma, sigma_prev, noise, noise_sampler):
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * noise / (1 - alpha_cumprod).sqrt())
    if sigma_prev > 0:
        mu += ((1 - alpha) * (1. - alpha_cumprod_prev) / (1. - alpha_cumprod)).sqrt() * noise_sampler(sigma, sigma_prev)
    return mu


@torch.no_grad()
def sample_ddpm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None):
    """Ancestral DDPM steps (Ho et al. 2020, eq. 11) taken in VP space on the given sigmas."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        x = _ddpm_step(x / torch.sqrt(1.0 + sigmas[i] ** 2.0), sigmas[i], sigmas[i + 1],
                       (x - denoised) / sigmas[i], noise_sampler)
        if sigmas[i + 1] != 0:
            x *= torch.sqrt(1.0 + sigmas[i + 1] ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, s_noise=1.0):
    """Latent Consistency Models (Luo et al. 2023): jump to x0, re-noise to the next sigma."""
    s_in = x.new_ones([x.shape[0]])
    model_sampling = model.model_sampling
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1])
            if s_noise != 1.0:
                noise = noise * s_noise
            x = model_sampling.noise_scaling(sigmas[i + 1], noise, x)
    return x
