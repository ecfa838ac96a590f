"""Discrete-time noise schedule of SD1.x / SD2.x / SDXL and the eps / v parameterisations.

The UNet was trained on 1000 discrete DDPM timesteps (Ho et al. 2020) with the "scaled linear"
beta schedule; k-diffusion (Karras et al. 2022, "Elucidating the Design Space...") samples in
sigma space instead, so this object converts between the two: sigma <-> timestep, the input
scaling c_in = 1/sqrt(sigma^2 + 1), and the denoised estimate from the network output.

Numbers follow ComfyUI's `ModelSamplingDiscrete` exactly (float64 schedule, float32 tables,
nearest-integer timesteps) so that sigma schedules and model inputs are bit-identical. The object
is small and picklable: it travels inside jobs and with model wrappers.
"""

from __future__ import annotations

import math

import torch

PREDICTION_TYPES = ("eps", "v")


class ModelSampling:
    """Sigma table + parameterisation of one discrete-time diffusion model (sigma_data = 1)."""

    sigma_data = 1.0

    def __init__(self, prediction_type: str = "eps", linear_start: float = 0.00085,
                 linear_end: float = 0.012, timesteps: int = 1000):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.prediction_type = prediction_type
        self.linear_start = float(linear_start)
        self.linear_end = float(linear_end)
        self.num_timesteps = int(timesteps)
        # "linear" in LDM terms = diffusers' scaled_linear: betas linear in sqrt space, float64.
        betas = torch.linspace(self.linear_start ** 0.5, self.linear_end ** 0.5, self.num_timesteps,
                               dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.sigmas = sigmas.float()                 # (T,) ascending
        self.log_sigmas = sigmas.log().float()       # (T,)

    # -- pickling keeps only the constructor arguments (tables are rebuilt, identically) --------
    def __getstate__(self):
        return {"prediction_type": self.prediction_type, "linear_start": self.linear_start,
                "linear_end": self.linear_end, "timesteps": self.num_timesteps}

    def __setstate__(self, state):
        self.__init__(state["prediction_type"], state["linear_start"], state["linear_end"], state["timesteps"])

    def __eq__(self, other):
        return isinstance(other, ModelSampling) and self.__getstate__() == other.__getstate__()

    def __hash__(self):
        return hash(tuple(sorted(self.__getstate__().items())))

    def __repr__(self):
        return (f"ModelSampling(prediction_type={self.prediction_type!r}, linear_start={self.linear_start}, "
                f"linear_end={self.linear_end}, timesteps={self.num_timesteps})")

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest integer timestep in log-sigma (ties to the lower index), same dtype as an index."""
        sigma = torch.as_tensor(sigma)
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        """Sigma at a (possibly fractional) timestep: log-linear interpolation of the table."""
        timestep = torch.as_tensor(timestep)
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=len(self.sigmas) - 1)
        low_idx = t.floor().long()
        high_idx = t.ceil().long()
        w = t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        percent = 1.0 - percent
        return self.sigma(torch.tensor(percent * 999.0)).item()

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """UNet input x * c_in with c_in = 1/sqrt(sigma^2 + sigma_data^2); sigma is (B,)."""
        sigma = sigma.view(sigma.shape[:1] + (1,) * (x.ndim - 1))
        return x / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 estimate from the raw network output (eps: x - eps*sigma; v: Salimans & Ho 2022)."""
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        if self.prediction_type == "eps":
            return x - model_output * sigma
        sd = self.sigma_data
        return x * sd ** 2 / (sigma ** 2 + sd ** 2) - model_output * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5

    def noise_scaling(self, sigma, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        """Initial x: at (or above) sigma_max the VP prior has variance 1 + sigma^2, not sigma^2."""
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma ** 2.0)
        else:
            noise = noise * sigma
        return noise + latent_image

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        """eps/v latents leave the sampler as they are (flow latents are divided by 1 - sigma)."""
        return latent

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        """True when the schedule starts at sigma_max (relative tolerance 1e-5) or above."""
        max_sigma = float(self.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


def flow_shift(shift: float, t):
    """SD3 / AuraFlow time shift (Esser et al. 2024, eq. 23): sigma(t) = s*t / (1 + (s - 1)*t)."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def flux_shift(mu: float, t):
    """Flux's resolution-dependent shift: sigma(t) = e^mu / (e^mu + (1/t - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


class FlowModelSampling:
    """Rectified-flow ("CONST") sampling of the diffusion transformers: x_sigma = (1 - sigma)*x0 + sigma*noise.

    kind "shift": ComfyUI's ModelSamplingDiscreteFlow (SD3, AuraFlow, Z-Image, Wan, Qwen-Image nodes):
    a 1000-entry table sigma(i/1000) with `flow_shift`, and the model sees sigma * multiplier.
    kind "flux": ComfyUI's ModelSamplingFlux: a 10000-entry table with `flux_shift(mu)` (the `shift`
    argument is mu), and the model sees sigma itself. Tables are float32, as ComfyUI's buffers.
    The network predicts the velocity v = noise - x0, so denoised = x - sigma * v.
    """

    prediction_type = "flow"
    sigma_data = 1.0

    def __init__(self, kind: str = "shift", shift: float = 1.0, multiplier: float = 1000.0):
        if kind not in ("shift", "flux"):
            raise ValueError(f"unknown flow sampling kind {kind!r}; expected 'shift' or 'flux'")
        self.kind = kind
        self.shift = float(shift)
        self.multiplier = float(multiplier) if kind == "shift" else 1.0
        steps = 1000 if kind == "shift" else 10000
        self.sigmas = self.sigma((torch.arange(1, steps + 1, 1) / steps) * self.multiplier).float()
        self.log_sigmas = self.sigmas.log()

    def __getstate__(self):
        return {"kind": self.kind, "shift": self.shift, "multiplier": self.multiplier}

    def __setstate__(self, state):
        self.__init__(state["kind"], state["shift"], state["multiplier"])

    def __eq__(self, other):
        return isinstance(other, FlowModelSampling) and self.__getstate__() == other.__getstate__()

    def __hash__(self):
        return hash(tuple(sorted(self.__getstate__().items())))

    def __repr__(self):
        return f"FlowModelSampling(kind={self.kind!r}, shift={self.shift}, multiplier={self.multiplier})"

    @property
    def sigma_min(self) -> torch.Tensor:
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.sigmas[-1]

    def timestep(self, sigma):
        return sigma * self.multiplier

    def sigma(self, timestep):
        t = timestep / self.multiplier
        return flow_shift(self.shift, t) if self.kind == "shift" else flux_shift(self.shift, t)

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        t = 1.0 - percent
        return float(flow_shift(self.shift, t) if self.kind == "shift" else flux_shift(self.shift, t))

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_denoised(self, sigma: torch.Tensor, model_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        sigma = sigma.view(sigma.shape[:1] + (1,) * (model_output.ndim - 1))
        return x - model_output * sigma

    def noise_scaling(self, sigma, noise: torch.Tensor, latent_image: torch.Tensor,
                      max_denoise: bool = False) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        sigma = sigma.view(sigma.shape[:1] + (1,) * (noise.ndim - 1)) if sigma.ndim else sigma
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=latent.dtype, device=latent.device)
        return latent / (1.0 - sigma)

    def is_max_denoise(self, sigmas: torch.Tensor) -> bool:
        max_sigma = float(self.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma
