"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), multistep, data prediction, B(h) variants bh1 / bh2, as ComfyUI runs it.

The solver works in VP space with sigma itself as the time variable: alpha(s) = 1/sqrt(1+s^2),
sigma_vp = sqrt(1-alpha^2), lambda = log alpha - log sigma_vp. The k-diffusion state x is
divided by sqrt(1+sigma_0^2) on entry; a final sigma of 0 is replaced by 0.001 and the result
divided by alpha(0.001). Order = min(3, len(sigmas) - 2), lower order on the final steps, a
corrector on every step but the last; the corrector's model call is reused as the next
predictor's history (that is what makes UniPC cost one call per step).
"""

from __future__ import annotations

import torch

from .samplers_k import _cb


def _log_alpha(sigma):
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma):
    return torch.exp(_log_alpha(sigma))


def _std(sigma):
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma):
    log_mean_coeff = _log_alpha(sigma)
    log_std = 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean_coeff))
    return log_mean_coeff - log_std


def _expand(v, ndim):
    return v[(...,) + (None,) * (ndim - 1)]


def _uni_pc_update(model_fn, x, model_prev_list, t_prev_list, t, order, use_corrector, variant):
    """One UniPC step t_prev -> t: predictor of the given order, then (optionally) the corrector."""
    dims = x.dim()
    t_prev_0 = t_prev_list[-1]
    lambda_prev_0, lambda_t = _lambda(t_prev_0), _lambda(t)
    model_prev_0 = model_prev_list[-1]
    sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
    alpha_t = torch.exp(_log_alpha(t))
    h = lambda_t - lambda_prev_0

    rks, D1s = [], []
    for i in range(1, order):
        t_prev_i = t_prev_list[-(i + 1)]
        model_prev_i = model_prev_list[-(i + 1)]
        rk = ((_lambda(t_prev_i) - lambda_prev_0) / h)[0]
        rks.append(rk)
        D1s.append((model_prev_i - model_prev_0) / rk)
    rks.append(torch.tensor(1.0, dtype=h.dtype))
    rks = torch.stack([r.to(device=x.device, dtype=h.dtype) for r in rks])

    hh = -h[0]                                    # data prediction integrates in -lambda
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial_i = 1
    if variant == "bh1":
        B_h = hh
    elif variant == "bh2":
        B_h = torch.expm1(hh)
    else:
        raise ValueError(f"unknown UniPC variant {variant!r}; expected 'bh1' or 'bh2'")
    R, b = [], []
    for i in range(1, order + 1):
        R.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / B_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    R = torch.stack(R)
    b = torch.stack(b).to(x.device)

    rhos_p = None
    if D1s:
        D1s = torch.stack(D1s, dim=1)             # (B, K, C, H, W)
        rhos_p = torch.tensor([0.5], device=x.device) if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1])
    else:
        D1s = None
    if use_corrector:
        rhos_c = torch.tensor([0.5], device=x.device) if order == 1 else torch.linalg.solve(R, b)

    x_t_ = _expand(sigma_t / sigma_prev_0, dims) * x - _expand(alpha_t * h_phi_1, dims) * model_prev_0
    pred_res = torch.einsum("k,bk...->b...", rhos_p, D1s) if D1s is not None else 0
    x_t = x_t_ - _expand(alpha_t * B_h, dims) * pred_res
    model_t = None
    if use_corrector:
        model_t = model_fn(x_t, t)
        corr_res = torch.einsum("k,bk...->b...", rhos_c[:-1], D1s) if D1s is not None else 0
        D1_t = model_t - model_prev_0
        x_t = x_t_ - _expand(alpha_t * B_h, dims) * (corr_res + rhos_c[-1] * D1_t)
    return x_t, model_t


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, variant="bh1"):
    timesteps = sigmas.clone()
    if sigmas[-1] < 0.001:
        timesteps[-1] = 0.001
    x = x / torch.sqrt(1.0 + timesteps[0] ** 2.0)

    def model_fn(x_vp, t):
        """x0 (data prediction) from the k-diffusion denoiser, via its noise prediction."""
        sigma = t.view(t.shape[:1] + (1,) * (x_vp.ndim - 1))
        x_in = x_vp * ((sigma ** 2 + 1.0) ** 0.5)
        eps = (x_in - model(x_in, t)) / sigma
        alpha_t, sigma_t = _alpha(t), _std(t)
        return (x_vp - _expand(sigma_t, x_vp.dim()) * eps) / _expand(alpha_t, x_vp.dim())

    batch = x.shape[0]
    order = min(3, len(timesteps) - 2)
    steps = len(timesteps) - 1
    model_prev_list, t_prev_list = [], []
    for step_index in range(steps):
        if step_index == 0:
            vec_t = timesteps[0].expand(batch)
            model_prev_list = [model_fn(x, vec_t)]
            t_prev_list = [vec_t]
        elif step_index < order:
            vec_t = timesteps[step_index].expand(batch)
            x, model_x = _uni_pc_update(model_fn, x, model_prev_list, t_prev_list, vec_t, step_index, True, variant)
            if model_x is None:
                model_x = model_fn(x, vec_t)
            model_prev_list.append(model_x)
            t_prev_list.append(vec_t)
        else:
            extra_final_step = 1 if step_index == steps - 1 else 0
            for step in range(step_index, step_index + 1 + extra_final_step):
                vec_t = timesteps[step].expand(batch)
                step_order = min(order, steps + 1 - step)
                use_corrector = step != steps
                x, model_x = _uni_pc_update(model_fn, x, model_prev_list, t_prev_list, vec_t, step_order,
                                            use_corrector, variant)
                for i in range(order - 1):
                    t_prev_list[i] = t_prev_list[i + 1]
                    model_prev_list[i] = model_prev_list[i + 1]
                t_prev_list[-1] = vec_t
                if step < steps:
                    if model_x is None:
                        model_x = model_fn(x, vec_t)
                    model_prev_list[-1] = model_x
        _cb(callback, x, step_index, sigmas[step_index], model_prev_list[-1])
    x = x / _alpha(timesteps[-1])
    return x
