"""A denoiser with a closed-form answer, for sampler tests: data x0 ~ N(mean, std^2) element-wise.

For eps models (k-diffusion VE space, x = x0 + sigma n) and for rectified-flow models
(x = (1 - sigma) x0 + sigma n) the posterior mean E[x0 | x] is affine in x, and the probability-flow
ODE maps the marginal N(m(sigma), v(sigma)) at one sigma onto the marginal at another by the affine
map that matches mean and standard deviation; `exact_ode` gives that answer.

`GaussianDenoiser` is the k-diffusion `model` argument of a sampler: model(x, sigma (B,)) -> x0. With
an `uncond_mean` it also predicts an unconditional x0 and applies classifier-free guidance like
diffmesh's Denoiser (uncond + (cond - uncond) * cfg, uncond kept in `last_uncond`). `wobble` adds a
smooth nonlinearity (wobble * tanh(x) * sigma / (1 + sigma)) so that recorded trajectories exercise
more than an affine model. The same class produced the recorded ComfyUI numbers in
tests/data/samplers/ (see its README).
"""

from __future__ import annotations

import torch


class GaussianDenoiser:
    def __init__(self, model_sampling, mean, std: float, uncond_mean=None, cfg: float = 1.0, wobble: float = 0.0):
        self.model_sampling = model_sampling
        self.flow = model_sampling.prediction_type == "flow"
        self.mean = _floating(mean)
        self.uncond_mean = self.mean if uncond_mean is None else _floating(uncond_mean)
        self.std = float(std)
        self.cfg = float(cfg)
        self.wobble = float(wobble)
        self.keep_uncond = False
        self.last_uncond = None
        self.calls = 0

    def posterior_mean(self, x, sigma, mean):
        s2 = self.std ** 2
        if self.flow:
            a = 1 - sigma
            return mean + a * s2 / (a * a * s2 + sigma * sigma) * (x - a * mean)
        return mean + s2 / (s2 + sigma * sigma) * (x - mean)

    def predictions(self, x, sigma):
        """(cond x0, uncond x0) at x, sigma (B,)."""
        sigma = sigma.reshape([-1] + [1] * (x.ndim - 1)).to(x.dtype)
        extra = self.wobble * torch.tanh(x) * sigma / (1 + sigma) if self.wobble else 0.0
        return (self.posterior_mean(x, sigma, self.mean) + extra,
                self.posterior_mean(x, sigma, self.uncond_mean) + extra)

    def __call__(self, x, sigma, **_):
        self.calls += 1
        cond, uncond = self.predictions(x, sigma)
        self.last_uncond = uncond
        return uncond + (cond - uncond) * self.cfg


def _floating(value) -> torch.Tensor:
    value = torch.as_tensor(value)
    return value if value.is_floating_point() else value.float()


def marginal(sigma: float, mean, std: float, flow: bool):
    """(mean, standard deviation) of x at sigma."""
    sigma = float(sigma)
    if flow:
        a = 1 - sigma
        return a * mean, (a * a * std * std + sigma * sigma) ** 0.5
    return mean, (std * std + sigma * sigma) ** 0.5


def exact_ode(x, sigma_from: float, sigma_to: float, mean, std: float, flow: bool):
    """The probability-flow ODE's solution at sigma_to from x at sigma_from (float64)."""
    m0, s0 = marginal(sigma_from, mean.double(), std, flow)
    m1, s1 = marginal(sigma_to, mean.double(), std, flow)
    return m1 + (x.double() - m0) * (s1 / s0)
