"""A fully specified sampling job: what a worker needs to run one KSampler call.

The graph side (the KSampler nodes) computes sigmas and initial noise on the CPU, exactly as
ComfyUI draws them, and builds a `SampleJob`; the worker that holds the UNet runs it with
`diffmesh.sampling.pipeline.run_sample_job`. Parallel strategies split a job (`batch_slice`,
`cfg_part`) without changing any number in it, which is why 1 and N devices give one image.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass
class SampleJob:
    latent: torch.Tensor                 # (B,C,H,W) unscaled input latent (zeros for txt2img), CPU float32
    noise: torch.Tensor                  # (B,C,H,W) initial noise from the seed (zeros if add_noise off)
    sigmas: torch.Tensor                 # (n+1,) float32 schedule after denoise/start/end adjustments
    sampler_name: str
    cfg: float
    positive: list                       # CONDITIONING
    negative: list                       # CONDITIONING
    seed: int                            # seeds per-step noise (ancestral / SDE samplers)
    noise_mask: torch.Tensor | None = None
    # Batch parallel: this job computes rows [start, stop) of a batch of `total` samples. Per-step noise
    # is still drawn for the whole batch and then sliced, so every row matches a single-device run.
    batch_slice: tuple[int, int, int] | None = None
    # CFG parallel: which half of each guidance evaluation this worker computes ("cond" | "uncond"),
    # and the exchange used to combine halves (set by the worker, not serialized).
    cfg_part: str | None = None
    exchange: Any = None
    sampler_options: dict | None = None
    # A MODEL's denoise-mask function (`sampling.mask_functions`), e.g. ("differential", strength).
    denoise_mask_fn: tuple | None = None

    def sliced(self, start: int, stop: int) -> "SampleJob":
        total = self.latent.shape[0] if self.batch_slice is None else self.batch_slice[2]
        base = 0 if self.batch_slice is None else self.batch_slice[0]
        # noise_mask stays whole (it is small): the pipeline repeats it to the full batch, as ComfyUI
        # does, and only then takes this slice's rows, so masks of any batch size split correctly.
        return replace(self, latent=self.latent[start:stop], noise=self.noise[start:stop],
                       batch_slice=(base + start, base + stop, total))
