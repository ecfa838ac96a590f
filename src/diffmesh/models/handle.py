"""Model handles: what travels between nodes, workers and processes instead of weights.

A loader node returns a `ModelHandle`; a worker turns it into a runnable component on its own
device through its memory manager (`diffmesh.executors.worker`). Handles are frozen, hashable
and picklable, so they can key caches and cross process boundaries; changing a LoRA strength or
the CLIP skip makes a new handle over the same base weights (`weights_key` stays the same).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

COMPONENTS = ("unet", "clip", "vae")


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA file applied at a strength to the component its keys address."""

    path: str
    strength: float


@dataclass(frozen=True)
class ModelHandle:
    """A reference to one component of a model file, with the patches and options applied to it.

    path:        absolute path of the checkpoint (or separate VAE) file
    component:   "unet" | "clip" | "vae"
    family:      model family id from `diffmesh.models.detect` ("sd1", "sd2", "sd2v", "sdxl")
    loras:       LoRA patches applied in order (UNet or text-encoder part, by component)
    clip_skip:   CLIPSetLastLayer value (clip only; -1 = last layer, None = the family's default:
                 last for SD1, penultimate for SD2 and SDXL, as ComfyUI without CLIPSetLastLayer)
    embedding_dirs: folders searched for `embedding:name` (clip only)
    device:      placement request ("cpu", "cuda:1", "1"...), None = let the engine place it
    dtype:       weight dtype request ("fp32", "fp16", "bf16", "fp8_e4m3fn", ...), None = device default
    sampling:    model-sampling override set by ComfyUI's ModelSampling* nodes (unet only), as the
                 arguments of `diffmesh.sampling.model_sampling.FlowModelSampling`: ("shift", shift,
                 multiplier) or ("flux", mu, 1.0); None = the family's default
    extra_paths: further files that make up this component, in order (DualCLIPLoader's second text
                 encoder, ...); part of the base-weights identity
    parallel:    parallel-strategy request of a MODEL (`MultiGPU_WorkUnits`: "cfg", "batch", ...), None =
                 follow `--parallel`; the engine strips it before a handle reaches a worker
                 (`diffmesh.parallel.request.plain_handle`), so it never makes a second copy load
    denoise_mask_fn: ComfyUI's model option `denoise_mask_function` as data (unet only):
                 ("differential", strength) from DifferentialDiffusion; None = the mask as given.
                 The sampler nodes move it into the SampleJob (`sampling.mask_functions.split_mask_fn`)
    """

    path: str
    component: str
    family: str
    loras: tuple[LoraPatch, ...] = ()
    clip_skip: int | None = None
    embedding_dirs: tuple[str, ...] = field(default=(), compare=True)
    device: str | None = None
    dtype: str | None = None
    sampling: tuple | None = None
    extra_paths: tuple[str, ...] = ()
    parallel: str | None = None
    denoise_mask_fn: tuple | None = None

    def __post_init__(self) -> None:
        if self.component not in COMPONENTS:
            raise ValueError(f"unknown model component {self.component!r}; expected one of {COMPONENTS}")

    @property
    def weights_key(self) -> tuple:
        """Identity of the base weights: LoRA strength and clip skip do not change it."""
        return (self.path, self.component, self.dtype) + ((self.extra_paths,) if self.extra_paths else ())

    def with_lora(self, path: str, strength: float) -> "ModelHandle":
        return replace(self, loras=self.loras + (LoraPatch(path, float(strength)),))

    def with_options(self, **changes) -> "ModelHandle":
        return replace(self, **changes)
