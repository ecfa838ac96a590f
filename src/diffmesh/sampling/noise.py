"""Noise: the initial latent noise and the per-step noise of ancestral and SDE samplers.

Same seed, same image, on any device and any device count (DESIGN rule 3). So every draw is made
on the CPU generator, exactly as ComfyUI draws it on a CPU run, for the FULL batch shape, and only
then sliced to the rows a worker owns (`batch_slice = (start, stop, total)`). ComfyUI itself draws
per-step noise on the sampling device (CUDA Philox on GPUs); we deliberately use its CPU stream
everywhere, which makes our GPU images equal to ComfyUI's CPU images.
"""

from __future__ import annotations

import torch


def _cpu_generator(seed: int) -> torch.Generator:
    """A private CPU generator: same stream as `torch.manual_seed(seed)`, without touching global state."""
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int(seed))
    return generator


def prepare_noise(latent: torch.Tensor, seed: int, batch_index=None) -> torch.Tensor:
    """Initial noise for a latent batch (B,C,H,W) from `torch.manual_seed(seed)` on the CPU.

    Without batch_index: one randn of the whole batch. With it (LatentFromBatch, RepeatLatentBatch):
    noises [1,C,H,W] are drawn for k = 0..max(index) and picked in the index order, so a sub-batch
    gets the same noise it had inside the full batch."""
    generator = _cpu_generator(seed)
    if batch_index is None:
        return torch.randn(latent.size(), dtype=latent.dtype, layout=latent.layout,
                           generator=generator, device="cpu")
    unique = sorted(set(int(i) for i in batch_index))
    noises = []
    for i in range(unique[-1] + 1):
        noise = torch.randn([1] + list(latent.size())[1:], dtype=latent.dtype, layout=latent.layout,
                            generator=generator, device="cpu")
        if i in unique:
            noises.append(noise)
    picked = [noises[unique.index(int(i))] for i in batch_index]
    return torch.cat(picked, dim=0)


def _full_shape(x: torch.Tensor, batch_slice) -> tuple[list[int], slice]:
    if batch_slice is None:
        return list(x.shape), slice(None)
    start, stop, total = batch_slice
    if stop - start != x.shape[0]:
        raise ValueError(f"batch_slice {batch_slice} does not match the local batch of {x.shape[0]}")
    return [int(total)] + list(x.shape[1:]), slice(int(start), int(stop))


class CPUNoiseSampler:
    """k-diffusion's `default_noise_sampler` with ComfyUI's CPU seeding (seed + 1).

    One randn of the full batch per call, sliced to this worker's rows."""

    def __init__(self, x: torch.Tensor, seed: int, batch_slice=None):
        self.shape, self.rows = _full_shape(x, batch_slice)
        self.device, self.dtype = x.device, x.dtype
        self.generator = _cpu_generator(int(seed) + 1)

    def __call__(self, sigma=None, sigma_next=None) -> torch.Tensor:
        noise = torch.randn(self.shape, dtype=self.dtype, generator=self.generator, device="cpu")
        return noise[self.rows].to(self.device)


class BrownianTreeNoiseSampler:
    """Brownian-tree noise (torchsde, entropy = seed) for SDE samplers (Kidger et al. 2021).

    A Brownian tree gives the same increment W(s -> t) for the same interval however the interval
    is reached, so the noise is consistent across step counts; it is built on the CPU for the full
    batch shape and then sliced."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seed: int, batch_slice=None):
        import torchsde

        shape, self.rows = _full_shape(x, batch_slice)
        self.device, self.dtype = x.device, x.dtype
        t0 = torch.as_tensor(sigma_min).detach().cpu()
        t1 = torch.as_tensor(sigma_max).detach().cpu()
        t0, t1, self.sign = self._sort(t0, t1)
        w0 = torch.zeros(shape, dtype=x.dtype)
        self.tree = torchsde.BrownianTree(t0, w0, t1, entropy=int(seed))

    @staticmethod
    def _sort(a, b):
        return (a, b, 1) if a < b else (b, a, -1)

    def _w(self, t0, t1) -> torch.Tensor:
        t0, t1, sign = self._sort(t0, t1)
        dtype = t0.dtype
        t0, t1 = t0.detach().cpu().float(), t1.detach().cpu().float()
        w = torch.stack([self.tree(t0, t1)]).to(dtype=dtype) * (self.sign * sign)
        return w[0]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        w = self._w(t0, t1) / (t1 - t0).abs().sqrt().cpu()
        return w[self.rows].to(self.device)


def brownian_for_sigmas(x: torch.Tensor, sigmas: torch.Tensor, seed: int, batch_slice=None) -> BrownianTreeNoiseSampler:
    """The tree spans [smallest non-zero sigma, largest sigma] of the schedule, as in ComfyUI."""
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, batch_slice)


def inpaint_noise(shape, seed: int, batch_slice=None, dtype=torch.float32) -> torch.Tensor:
    """DDIM's separate re-noising noise for masked areas: CPU generator seeded seed + 1."""
    full = list(shape) if batch_slice is None else [int(batch_slice[2])] + list(shape[1:])
    generator = _cpu_generator(int(seed) + 1)
    noise = torch.randn(full, generator=generator, device="cpu").to(dtype)
    return noise if batch_slice is None else noise[batch_slice[0]:batch_slice[1]]
