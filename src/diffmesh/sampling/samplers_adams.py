"""Adams-type multistep samplers of ComfyUI's list: iPNDM with variable steps, DEIS and SA-Solver.
Same contract as `samplers.py`. Each reuses the previous steps' predictions, so one model call per
step buys a higher order; the coefficients depend on the step sizes and are computed here."""

from __future__ import annotations

import math

import torch

from .samplers_k import _cb, half_log_snr, is_flow, offset_first_sigma


@torch.no_grad()
def sample_ipndm_v(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, max_order=4):
    """Improved PNDM with variable step sizes (Zhang & Chen 2023, "Fast sampling of diffusion models
    with exponential integrator", as in zju-pi/diff-sampler): Adams-Bashforth weights recomputed for
    the actual, unequal steps instead of iPNDM's fixed ones."""
    s_in = x.new_ones([x.shape[0]])
    t = sigmas
    buffer = []          # previous derivatives, oldest first
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        d_cur = (x - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        elif order == 2:
            h_n, h_n_1 = t_next - t_cur, t_cur - t[i - 1]
            coeff1 = (2 + (h_n / h_n_1)) / 2
            coeff2 = -(h_n / h_n_1) / 2
            x_next = x + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer[-1])
        elif order == 3:
            h_n, h_n_1, h_n_2 = t_next - t_cur, t_cur - t[i - 1], t[i - 1] - t[i - 2]
            temp = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
            coeff1 = (2 + (h_n / h_n_1)) / 2 + temp
            coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp
            coeff3 = temp * h_n_1 / h_n_2
            x_next = x + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2])
        else:
            x_next = x + (t_next - t_cur) * _ipndm_v_order4(t, i, d_cur, buffer)
        if len(buffer) == max_order - 1:
            buffer = buffer[1:]
        buffer.append(d_cur)
        x = x_next
    return x


def _ipndm_v_order4(t, i, d_cur, buffer):
    """The fourth-order variable-step combination of the current and three previous derivatives."""
    h_n, h_n_1 = t[i + 1] - t[i], t[i] - t[i - 1]
    h_n_2, h_n_3 = t[i - 1] - t[i - 2], t[i - 2] - t[i - 3]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    temp2 = ((1 - h_n / (3 * (h_n + h_n_1))) / 2 + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))) \
        * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3))
    ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    coeff1 = (2 + (h_n / h_n_1)) / 2 + temp1 + temp2
    coeff2 = -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + ratio) * temp2
    coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + ratio * (1 + h_n_2 / h_n_3)) * temp2
    coeff4 = -temp2 * ratio * h_n_1 / h_n_2
    return coeff1 * d_cur + coeff2 * buffer[-1] + coeff3 * buffer[-2] + coeff4 * buffer[-3]


# ---------------------------------------------------------------------------------------------- DEIS

def _edm_to_vp_time(sigmas, epsilon_s=1e-3, sigma_min=0.002, sigma_max=80.0):
    """VP time t of each sigma for the VP-SDE fitted to EDM's range [0.002, 80] (the DEIS reference's
    fixed choice, whatever the model), and that SDE's beta_0, beta_1."""
    log_min = torch.log(torch.tensor(sigma_min) ** 2 + 1)
    log_max = torch.log(torch.tensor(sigma_max) ** 2 + 1)
    beta_d = 2 * (log_min / epsilon_s - log_max) / (epsilon_s - 1)
    beta_min = log_max - 0.5 * beta_d
    sigmas = sigmas.detach().cpu()
    t = ((beta_min ** 2 + 2 * beta_d * (sigmas ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def deis_coefficients(sigmas, max_order, points=10000):
    """DEIS "tab" coefficients (Zhang & Chen 2023): for each step, the integral over the step of the
    eps weight -1/2 dlog(alpha)/dt / sqrt(alpha (1 - alpha)) times each Lagrange basis polynomial
    through the last `order` times, by a left Riemann sum on `points` points."""
    t_steps, beta_0, beta_1 = _edm_to_vp_time(sigmas)
    coeffs = []
    for i in range(len(t_steps) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        taus = torch.linspace(t_cur, t_next, points)
        dtau = (t_next - t_cur) / points
        prev_t = t_steps[[i - k for k in range(order)]]
        alpha = torch.exp(-0.5 * taus ** 2 * (beta_1 - beta_0) - taus * beta_0)
        d_log_alpha = -taus * (beta_1 - beta_0) - beta_0
        integrand = -0.5 * d_log_alpha / torch.sqrt(alpha * (1 - alpha))
        step = []
        for j in range(order):
            poly = 1
            for k in range(order):
                if k != j:
                    poly = poly * ((taus - prev_t[k]) / (prev_t[j] - prev_t[k]))
            step.append(torch.sum(integrand * poly) * dtau)
        coeffs.append(step)
    return coeffs


@torch.no_grad()
def sample_deis(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, max_order=3, deis_mode="tab"):
    """DEIS (Zhang & Chen 2023, "Fast sampling of diffusion models with exponential integrator",
    arXiv:2204.13902), tAB form: multistep on the eps prediction with exactly integrated weights."""
    if deis_mode != "tab":
        raise ValueError(f"deis_mode {deis_mode!r} is not implemented; diffmesh has 'tab' (ComfyUI's default)")
    s_in = x.new_ones([x.shape[0]])
    coeff_list = deis_coefficients(sigmas, max_order)
    buffer = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, t_cur * s_in)
        _cb(callback, x, i, sigmas[i], denoised)
        d_cur = (x - denoised) / t_cur
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + (t_next - t_cur) * d_cur
        else:
            coeffs = coeff_list[i]
            x_next = x + coeffs[0] * d_cur
            for c, d_prev in zip(coeffs[1:], reversed(buffer)):
                x_next = x_next + c.to(x.device) * d_prev
        if len(buffer) == max_order - 1:
            buffer = buffer[1:]
        buffer.append(d_cur)
        x = x_next
    return x


# ----------------------------------------------------------------------------------------- SA-Solver

def _exponential_moments(s, t, order, tau):
    """(1 + tau^2) * integral_s^t exp((1 + tau^2)(u - t)) u^p du for p = 0..order-1, by the
    integration-by-parts recursion I_p = P_p - p / (1 + tau^2) * I_{p-1}, P_p = t^p - s^p e^{-(1+tau^2)h}."""
    tau_mul = 1 + tau ** 2
    h = t - s
    p = torch.arange(order, dtype=s.dtype, device=s.device)
    boundary = t ** p - s ** p * (-tau_mul * h).exp()
    # I = M @ boundary with M[p, k] = (-1)^(p-k) p! / (k! tau_mul^(p-k)) for k <= p
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_fact = (p + 1).lgamma()
    log_m = log_fact.unsqueeze(1) - log_fact.unsqueeze(0)
    if tau > 0:
        log_m = log_m - depth * math.log(tau_mul)
    sign = torch.where(depth % 2 == 0, 1.0, -1.0)
    lower = torch.where(depth >= 0, log_m.exp() * sign, 0.0)     # (tril, which is slow on tiny CPU tensors)
    return lower @ boundary


def sa_solver_coefficients(sigma_next, lambdas, lambda_s, lambda_t, tau, simple_order_2=False, corrector=False):
    """SA-Solver b_i (Xue et al. 2023, eqs. 15 and 18): the exponentially weighted integrals of the
    Lagrange basis through `lambdas`, times alpha_t."""
    n = lambdas.shape[0]
    if simple_order_2 and n == 2:
        return _sa_solver_simple_order_2(sigma_next, lambdas, lambda_s, lambda_t, tau, corrector)
    moments = _exponential_moments(lambda_s, lambda_t, n, tau)
    vandermonde_t = torch.vander(lambdas, n, increasing=True).T
    lagrange = torch.linalg.solve(vandermonde_t, moments)
    alpha_t = sigma_next * lambda_t.exp()
    return alpha_t * lagrange


def _sa_solver_simple_order_2(sigma_next, lambdas, lambda_s, lambda_t, tau, corrector):
    """The simplified order-2 coefficients of the SA-Solver paper's Appendix D."""
    tau_mul = 1 + tau ** 2
    h = lambda_t - lambda_s
    alpha_t = sigma_next * lambda_t.exp()
    if corrector:
        b_1 = alpha_t * (0.5 * tau_mul * h)
        b_2 = alpha_t * (-h * tau_mul).expm1().neg() - b_1
    else:
        b_2 = alpha_t * (0.5 * tau_mul * h ** 2) / (lambdas[-2] - lambda_s)
        b_1 = alpha_t * (-h * tau_mul).expm1().neg() - b_2
    return torch.stack([b_2, b_1])


def sa_solver_tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0):
    """Stochasticity tau(sigma): eta inside [end_sigma, start_sigma], 0 (ODE) outside."""
    def tau_func(sigma) -> float:
        if eta <= 0:
            return 0.0
        sigma = float(sigma)
        return eta if start_sigma >= sigma >= end_sigma else 0.0
    return tau_func


@torch.no_grad()
def sample_sa_solver(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, tau_func=None,
                     s_noise=1.0, predictor_order=3, corrector_order=4, use_pece=False, simple_order_2=False):
    """SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams solver for fast sampling of diffusion
    models", NeurIPS, arXiv:2309.05019): stochastic Adams predictor and corrector in half-log-SNR time,
    noise only in the middle of the schedule (20% to 80%) by default."""
    if len(sigmas) <= 1:
        return x
    ms = model.model_sampling
    s_in = x.new_ones([x.shape[0]])
    sigmas = offset_first_sigma(sigmas, ms)
    lambdas = half_log_snr(sigmas, is_flow(model))
    if tau_func is None:
        tau_func = sa_solver_tau_interval(ms.percent_to_sigma(0.2), ms.percent_to_sigma(0.8), eta=1.0)
    max_used_order = max(predictor_order, corrector_order)
    x_pred = x                      # x: corrected current state, x_pred: predicted next state
    h, tau_t, noise = 0.0, 0.0, 0.0
    preds = []
    lower_order_to_end = sigmas[-1].item() == 0      # lower orders near the end for stability
    for i in range(len(sigmas) - 1):
        denoised = model(x_pred, sigmas[i] * s_in)
        _cb(callback, x_pred, i, sigmas[i], denoised)
        preds = (preds + [denoised])[-max_used_order:]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if lower_order_to_end:
            p_order = min(p_order, len(sigmas) - 2 - i)
            c_order = min(c_order, len(sigmas) - 1 - i)
        if c_order == 0:
            x = x_pred
        else:
            b = sa_solver_coefficients(sigmas[i], lambdas[i - c_order + 1:i + 1], lambdas[i - 1], lambdas[i],
                                       tau_t, simple_order_2, corrector=True)
            stacked = torch.stack(preds[-c_order:], dim=1)                 # (B, K, ...)
            x = sigmas[i] / sigmas[i - 1] * (-(tau_t ** 2) * h).exp() * x + torch.tensordot(stacked, b, dims=([1], [0]))
            if tau_t > 0 and s_noise > 0:
                x = x + noise       # the previous predictor's noise
            if use_pece:
                denoised = model(x, sigmas[i] * s_in)
                preds[-1] = denoised
        if sigmas[i + 1] == 0:
            x_pred = denoised
            continue
        tau_t = tau_func(sigmas[i + 1])
        b = sa_solver_coefficients(sigmas[i + 1], lambdas[i - p_order + 1:i + 1], lambdas[i], lambdas[i + 1],
                                   tau_t, simple_order_2, corrector=False)
        stacked = torch.stack(preds[-p_order:], dim=1)
        h = lambdas[i + 1] - lambdas[i]
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau_t ** 2) * h).exp() * x + torch.tensordot(stacked, b, dims=([1], [0]))
        if tau_t > 0 and s_noise > 0:
            noise = noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * tau_t ** 2 * h).expm1().neg().sqrt() * s_noise
            x_pred = x_pred + noise
    return x_pred


def sample_sa_solver_pece(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, tau_func=None,
                          s_noise=1.0, predictor_order=3, corrector_order=4, simple_order_2=False):
    """SA-Solver in PECE mode: the corrected state is evaluated again (two calls per step)."""
    return sample_sa_solver(model, x, sigmas, extra_args, callback, noise_sampler, tau_func=tau_func, s_noise=s_noise,
                            predictor_order=predictor_order, corrector_order=corrector_order, use_pece=True,
                            simple_order_2=simple_order_2)
