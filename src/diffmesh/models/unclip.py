"""SD2.1 unCLIP image conditioning (the UNet's ADM input `y`), with ComfyUI's numbers.

unCLIPConditioning puts `unclip_conditioning` entries ({clip_vision_output, strength,
noise_augmentation}) on a conditioning. For each image embedding of each entry, the noise augmentor
noises the embedding to level round(999 x noise_augmentation) of a 1000-step squared-cosine schedule
(q_sample with noise drawn from the sampler's seed - 10) and appends the sinusoidal embedding of that
level; the result is scaled by the strength. Several embeddings are summed and noised once more at
level round(999 x 0.05) ("unclip_noise_augment_merge"). Without entries `y` is zeros. The augmentor's
data mean/std are 0/1 in ComfyUI (its buffers are not read from the file), so scaling is the identity.
"""

from __future__ import annotations

import math

import torch

MAX_NOISE_LEVEL = 1000
TIMESTEPS = 1000
MERGE_NOISE = 0.05              # ComfyUI's default unclip_noise_augment_merge


def squared_cosine_alphas_cumprod(steps: int = TIMESTEPS) -> torch.Tensor:
    """alpha-bar of the "squaredcos_cap_v2" schedule (betas capped at 0.999), float64."""
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
                         dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def timestep_embedding(level: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) -> (N, dim) sinusoidal embedding, cosines first (LDM's `timestep_embedding`)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = level[:, None].float() * freqs[None]
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1) if dim % 2 else out


class NoiseAugmentor:
    """ComfyUI's CLIPEmbeddingNoiseAugmentation for embeddings `dim` wide (1024 for ViT-H, 768 for ViT-L)."""

    def __init__(self, dim: int):
        self.dim = dim
        alphas = squared_cosine_alphas_cumprod()
        self.sqrt_alphas = alphas.sqrt().float()
        self.sqrt_one_minus = (1.0 - alphas).sqrt().float()

    def __call__(self, embedding: torch.Tensor, level: int, generator: torch.Generator) -> torch.Tensor:
        """(dim,) or (1, dim) -> (1, 2 dim): the noised embedding, then the level's embedding."""
        x = embedding.reshape(1, -1).float().cpu()
        noise = torch.randn(x.shape, generator=generator)
        noised = self.sqrt_alphas[level] * x + self.sqrt_one_minus[level] * noise
        return torch.cat([noised, timestep_embedding(torch.tensor([level]), self.dim)], dim=1)


def _level(augmentation: float) -> int:
    return round((MAX_NOISE_LEVEL - 1) * augmentation)


def unclip_adm(entries: list[dict] | None, adm_channels: int, seed: int,
               merge_augmentation: float = MERGE_NOISE) -> torch.Tensor:
    """`y` (1, adm_channels) for a conditioning's unclip entries (zeros without any).

    The noise comes from one CPU generator seeded with `seed - 10`, re-seeded for each embedding and
    then continued for the merge, which is what ComfyUI's global-generator draws give on the CPU."""
    if not entries:
        return torch.zeros((1, adm_channels))
    augmentor = NoiseAugmentor(adm_channels // 2)
    generator = torch.Generator()
    parts = []
    for entry in entries:
        embeds = entry["clip_vision_output"].image_embeds
        if embeds.shape[-1] != augmentor.dim:
            raise ValueError(f"unCLIPConditioning: this model takes image embeddings {augmentor.dim} wide, the "
                             f"CLIP_VISION_OUTPUT has {embeds.shape[-1]}: encode with the CLIP vision model of the "
                             "unCLIP checkpoint (unCLIPCheckpointLoader's CLIP_VISION output)")
        for embedding in embeds:
            generator.manual_seed(seed - 10)
            parts.append(augmentor(embedding, _level(entry["noise_augmentation"]), generator) * entry["strength"])
    if len(parts) == 1:
        return parts[0]
    total = torch.stack(parts).sum(0)
    return augmentor(total[:, :augmentor.dim], _level(merge_augmentation), generator)
