"""DPM-Solver (Lu et al. 2022, "DPM-Solver: A fast ODE solver for diffusion probabilistic model
sampling in around 10 steps", arXiv:2206.00927) in its two k-diffusion forms: DPM-Solver-fast
(fixed steps uniform in log sigma, orders chosen to spend exactly the step budget) and
DPM-Solver-12/23 with adaptive step size. Same contract as `samplers.py`; both ignore the schedule
except its end points (largest sigma and the smallest non-zero one), as in ComfyUI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .samplers_k import _cb, get_ancestral_step


class _EpsSolver:
    """eps(x, t) = (x - D(x, sigma)) / sigma at t = -log sigma, with the single-, two- and three-stage
    DPM-Solver updates. `cache` holds the evaluations of the current step, shared by the updates."""

    def __init__(self, model, x):
        self.model = model
        self.s_in = x.new_ones([x.shape[0]])
        self.cache: dict = {}

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, key, x, t):
        if key not in self.cache:
            self.cache[key] = (x - self.model(x, self.sigma(t) * self.s_in)) / self.sigma(t)
        return self.cache[key]

    def step_1(self, x, t, t_next):
        h = t_next - t
        return x - self.sigma(t_next) * h.expm1() * self.eps("eps", x, t)

    def step_2(self, x, t, t_next, r1=1 / 2):
        h = t_next - t
        eps = self.eps("eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps("eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x, t, t_next, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps = self.eps("eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps("eps_r1", u1, s1)
        u2 = (x - self.sigma(s2) * (r2 * h).expm1() * eps
              - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps("eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def step(self, order, x, t, t_next):
        return {1: self.step_1, 2: self.step_2, 3: self.step_3}[order](x, t, t_next)


def _end_sigmas(sigmas):
    """ComfyUI's wrappers: sigma_max = sigmas[0]; sigma_min = the last sigma, or the one before a final 0."""
    sigma_min = sigmas[-1] if sigmas[-1] != 0 else sigmas[-2]
    return sigma_min, sigmas[0]


def _noisy_target(solver, t, t_next, t_end, eta, forward_min):
    """With eta > 0 step to the ancestral sigma_down and return the noise size su (eta = 0: t_next, 0)."""
    if not eta:
        return t_next, 0.0
    sd, _ = get_ancestral_step(solver.sigma(t), solver.sigma(t_next), eta)
    t_next_ = forward_min(t_end, solver.t(sd))
    return t_next_, (solver.sigma(t_next) ** 2 - solver.sigma(t_next_) ** 2) ** 0.5


@torch.no_grad()
def sample_dpm_fast(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, eta=0.0, s_noise=1.0):
    """DPM-Solver-fast: len(sigmas) - 1 model calls spent on steps uniform in log sigma, third order
    where the budget allows (Lu et al. 2022, section 3.4)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _end_sigmas(sigmas)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("dpm_fast needs a schedule whose first and last non-zero sigma are > 0")
    nfe = len(sigmas) - 1
    solver = _EpsSolver(model, x)
    t_start, t_end = solver.t(sigma_max.detach().clone()), solver.t(sigma_min.detach().clone())
    if eta and not t_end > t_start:
        raise ValueError("dpm_fast: eta must be 0 for reverse sampling")
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        solver.cache = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = _noisy_target(solver, t, t_next, t_end, eta, torch.minimum)
        eps = solver.eps("eps", x, t)
        _cb(callback, x, i, solver.sigma(t), x - solver.sigma(t) * eps)
        x = solver.step(order, x, t, t_next_)
        if su:
            if noise_sampler is None:
                raise ValueError("dpm_fast with eta > 0 needs a noise sampler")
            x = x + su * s_noise * noise_sampler(solver.sigma(t), solver.sigma(t_next))
    return x


@dataclass
class PIDStepSizeController:
    """PID step-size control for adaptive ODE solvers (Söderlind 2003), with an arctan limiter."""
    h: float
    pcoeff: float
    icoeff: float
    dcoeff: float
    order: float = 1
    accept_safety: float = 0.81
    eps: float = 1e-8
    errs: list = field(default_factory=list)

    def propose_step(self, error) -> bool:
        """Scale h by the controller's factor; True when the step that gave `error` is accepted."""
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        b3 = self.dcoeff / self.order
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** b1 * self.errs[1] ** b2 * self.errs[2] ** b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigmas, extra_args=None, callback=None, noise_sampler=None, order=3, rtol=0.05,
                        atol=0.0078, h_init=0.05, pcoeff=0.0, icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0,
                        s_noise=1.0):
    """DPM-Solver-12 / -23 with adaptive steps: an embedded lower-order solution estimates the local
    error, and a PID controller picks the next step in log sigma (Lu et al. 2022, section 3.3)."""
    if len(sigmas) <= 1:
        return x
    if order not in {2, 3}:
        raise ValueError(f"dpm_adaptive order must be 2 or 3, got {order}")
    sigma_min, sigma_max = _end_sigmas(sigmas)
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("dpm_adaptive needs a schedule whose first and last non-zero sigma are > 0")
    solver = _EpsSolver(model, x)
    t_start, t_end = solver.t(sigma_max.detach().clone()), solver.t(sigma_min.detach().clone())
    forward = t_end > t_start
    if not forward and eta:
        raise ValueError("dpm_adaptive: eta must be 0 for reverse sampling")
    h_init = abs(h_init) * (1 if forward else -1)
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    s, x_prev, steps = t_start, x, 0
    pid = PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    clamp = torch.minimum if forward else torch.maximum
    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        solver.cache = {}
        t = clamp(t_end, s + pid.h)
        t_, su = _noisy_target(solver, s, t, t_end, eta, torch.minimum)
        denoised = x - solver.sigma(s) * solver.eps("eps", x, s)
        if order == 2:
            x_low, x_high = solver.step_1(x, s, t_), solver.step_2(x, s, t_)
        else:
            x_low, x_high = solver.step_2(x, s, t_, r1=1 / 3), solver.step_3(x, s, t_)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high
            if su:
                if noise_sampler is None:
                    raise ValueError("dpm_adaptive with eta > 0 needs a noise sampler")
                x = x + su * s_noise * noise_sampler(solver.sigma(s), solver.sigma(t))
            s = t
        steps += 1
        _cb(callback, x, steps - 1, solver.sigma(s), denoised)
    return x
