"""One sampler step of a model file under the allocator probe: what bench/activations.py measures and
what the tests check the table's predictions against (`engine.activations`).

`step_peak(model, handle, side, frames, rows)` runs one euler step of `run_sample_job` in fp32 under
no_grad on a latent of `side` x `side` (x `frames` for the 5-D families), with cfg 1 (one row) or
cfg 2 and the same conditioning for cond and uncond (batched: two rows), and returns the peak bytes
the CPU allocator held beyond what it held before the step.
"""

from __future__ import annotations

from typing import Any

import torch

UNETS = ("sd1", "sd2", "sd2v", "sdxl")
CONTEXT_TOKENS = {"flux": 256, "zimage": 256, "qwenimage": 256, "wan21": 512, "wan22": 512}


def tokens(family: str, side: int, frames: int = 1) -> int:
    """T of the table: latent pixels for a UNet, 2x2 patches (all frames) for a transformer."""
    return side * side if family in UNETS else frames * ((side + 1) // 2) ** 2


def conditioning(family: str, path: str) -> list:
    """One conditioning entry the family's model accepts: context rows of the file's text width
    (77 for a UNet, `CONTEXT_TOKENS` for a transformer) and the pooled vectors it reads."""
    from diffmesh.models import detect

    shapes = detect.read_shapes(path)
    g = torch.Generator().manual_seed(0)
    extra: dict[str, Any] = {}
    if family in UNETS:
        key = next(k for k in shapes if k.endswith("attn2.to_k.weight"))
        width = shapes[key][1]
        label = next((s for k, s in shapes.items() if k.endswith("label_emb.0.0.weight")), None)
        if label is not None:                     # SDXL: pooled text + six 256-wide size embeddings
            extra["pooled_output"] = torch.randn(1, label[1] - 6 * 256, generator=g)
    elif family == "flux":
        width = shapes["txt_in.weight"][1]
        extra = {"pooled_output": torch.randn(1, shapes["vector_in.in_layer.weight"][1], generator=g),
                 "guidance": 3.5}
    elif family == "zimage":
        width = shapes["cap_embedder.1.weight"][1]
    elif family == "qwenimage":
        width = shapes["txt_in.weight"][1]
    else:
        width = shapes["text_embedding.0.weight"][1]
    length = 77 if family in UNETS else CONTEXT_TOKENS[family]
    return [[torch.randn(1, length, width, generator=g), extra]]


def latent(family: str, side: int, frames: int = 1) -> torch.Tensor:
    if family in UNETS:
        return torch.zeros(1, 4, side, side)
    if family in ("qwenimage", "wan21"):
        return torch.zeros(1, 16, frames, side, side)
    if family == "wan22":
        return torch.zeros(1, 48, frames, side, side)
    return torch.zeros(1, 16, side, side)


def step_peak(model: Any, handle: Any, side: int, frames: int = 1, rows: int = 1, cond: list | None = None) -> int:
    """Peak allocator bytes of one sampler step of `model` (built from `handle`) at this size; rows 1
    (cfg 1) or 2 (cfg 2, cond and uncond in one batch)."""
    from diffmesh.engine.activations import measure_peak
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.pipeline import run_sample_job
    from diffmesh.sampling.schedules import ksampler_sigmas

    cond = conditioning(handle.family, handle.path) if cond is None else cond
    x = latent(handle.family, side, frames)
    job = SampleJob(latent=x, noise=prepare_noise(x, 1, None),
                    sigmas=ksampler_sigmas(model_sampling_for(handle), "simple", "euler", 1, 1.0),
                    sampler_name="euler", cfg=1.0 if rows == 1 else 2.0, positive=cond, negative=cond, seed=1)
    with torch.no_grad():
        return measure_peak(lambda: run_sample_job(model, job))
