"""A deterministic analytic DiffusionModel for sampling tests: eps = 0.3*x + t/2000 + mean(context)."""

from __future__ import annotations

import torch

from diffmesh.sampling.latent_formats import for_family
from diffmesh.sampling.model_sampling import ModelSampling


class ToyModel:
    def __init__(self, prediction_type="eps", calls=None):
        self.model_sampling = ModelSampling(prediction_type=prediction_type)
        self.latent_format = for_family("sd1")
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.calls = calls if calls is not None else []

    def extra_conds(self, options, x_shape):
        return {}

    def __call__(self, x, timestep, context, **extra):
        self.calls.append((x.shape[0], context.shape[1]))
        ctx = context.mean(dim=(1, 2)).view(-1, 1, 1, 1)      # per-sample conditioning signal
        return 0.3 * x + timestep.view(-1, 1, 1, 1) / 2000.0 + ctx


def conditioning(value: float, tokens: int = 77, **options):
    return [[torch.full((1, tokens, 8), float(value)), {"pooled_output": torch.zeros(1, 8), **options}]]
