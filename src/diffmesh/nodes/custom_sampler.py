"""ComfyUI's custom-sampling nodes (comfy_extras/nodes_custom_sampler.py): KSamplerSelect,
BasicScheduler, RandomNoise, DisableNoise, BasicGuider, CFGGuider, SamplerCustom and
SamplerCustomAdvanced, with ComfyUI's names, inputs, defaults and outputs.

The SAMPLER, SIGMAS, GUIDER and NOISE values are plain data (a sampler name with options, a 1-D
sigma tensor, model + conditioning + cfg, a seed or none); the two sampling nodes turn them into
the same fully specified `SampleJob` KSampler builds and run it through `engine.sample`, so every
placement and parallel strategy of the engine applies. BasicGuider samples the positive
conditioning alone (cfg 1, as ComfyUI's Guider_Basic, whose uncond is never evaluated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, OutputSpec, combo, inp, out
from diffmesh.nodes.sampling import (CFG, SAMPLER_NAMES, SCHEDULER_NAMES, SEED_MAX, _progress, fix_empty_latent,
                                     model_sampling_for)


@dataclass(frozen=True)
class Sampler:
    """SAMPLER: a sampler of diffmesh's table by ComfyUI name, with option overrides."""

    name: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Guider:
    """GUIDER: what the denoiser is guided by."""

    model: Any
    positive: list
    negative: list
    cfg: float


@dataclass(frozen=True)
class Noise:
    """NOISE: ComfyUI's Noise_RandomNoise (seeded, per batch index) or Noise_EmptyNoise (zeros, seed 0)."""

    seed: int = 0
    random: bool = False

    def generate_noise(self, latent: dict) -> torch.Tensor:
        from diffmesh.sampling.noise import prepare_noise

        samples = latent["samples"]
        if not self.random:
            return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")
        return prepare_noise(samples, self.seed, latent.get("batch_index"))


def ksampler_select(ctx: NodeContext, sampler_name: str):
    return (Sampler(sampler_name),)


def basic_scheduler(ctx: NodeContext, model, scheduler: str, steps: int, denoise: float):
    from diffmesh.sampling.schedules import calculate_sigmas

    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return (torch.FloatTensor([]),)
        total = int(steps / denoise)
    sigmas = calculate_sigmas(model_sampling_for(model), scheduler, total).cpu()
    return (sigmas[-(steps + 1):],)


def random_noise(ctx: NodeContext, noise_seed: int):
    return (Noise(int(noise_seed), True),)


def disable_noise(ctx: NodeContext):
    return (Noise(),)


def basic_guider(ctx: NodeContext, model, conditioning: list):
    return (Guider(model, conditioning, [], 1.0),)


def cfg_guider(ctx: NodeContext, model, positive: list, negative: list, cfg: float):
    return (Guider(model, positive, negative, float(cfg)),)


def _sample(ctx: NodeContext, guider: Guider, noise: Noise, sampler: Sampler, sigmas: torch.Tensor,
            latent_image: dict) -> tuple[dict, dict]:
    """(output, denoised_output): the sampled latent and the last step's x0 estimate (the output
    itself when no step reported one)."""
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.latent_formats import for_family

    from diffmesh.sampling.mask_functions import split_mask_fn

    model, mask_fn = split_mask_fn(guider.model)
    latent = {**latent_image, "samples": fix_empty_latent(latent_image["samples"], model.family)}
    if sigmas.numel() == 0:
        return latent, latent
    job = SampleJob(latent=latent["samples"], noise=noise.generate_noise(latent), sigmas=sigmas.float(),
                    sampler_name=sampler.name, cfg=guider.cfg, positive=guider.positive, negative=guider.negative,
                    seed=noise.seed, noise_mask=latent.get("noise_mask"), sampler_options=dict(sampler.options) or None,
                    denoise_mask_fn=mask_fn)
    report = _progress(ctx, model.family)
    last: dict[str, torch.Tensor] = {}

    def on_event(event: dict) -> None:
        if event.get("type", "progress") == "progress" and event.get("x0") is not None:
            last["x0"] = event["x0"]
        report(event)

    samples = ctx.engine.sample(model, job, on_event).to("cpu", torch.float32)
    output = {**latent, "samples": samples}
    x0 = last.get("x0")
    if x0 is None or tuple(x0.shape) != tuple(samples.shape):
        return output, output
    return output, {**latent, "samples": for_family(model.family).process_out(x0.to("cpu", torch.float32))}


def sampler_custom(ctx: NodeContext, model, add_noise: bool, noise_seed: int, cfg: float, positive: list,
                   negative: list, sampler: Sampler, sigmas: torch.Tensor, latent_image: dict):
    # without added noise ComfyUI still seeds the per-step noise of SDE samplers with noise_seed
    noise = Noise(int(noise_seed), bool(add_noise))
    return _sample(ctx, Guider(model, positive, negative, float(cfg)), noise, sampler, sigmas, latent_image)


def sampler_custom_advanced(ctx: NodeContext, noise: Noise, guider: Guider, sampler: Sampler, sigmas: torch.Tensor,
                            latent_image: dict):
    return _sample(ctx, guider, noise, sampler, sigmas, latent_image)


CUSTOM = "sampling/custom_sampling"
MODULE = "comfy_extras.nodes_custom_sampler"
SEED = dict(default=0, min=0, max=SEED_MAX, control_after_generate=True)
SAMPLED = (OutputSpec("LATENT", "output"), OutputSpec("LATENT", "denoised_output"))


def _node(name: str, category: str, inputs: tuple, outputs: tuple, function) -> NodeDef:
    return NodeDef(NodeSchema(name=name, display_name=name, category=category, inputs=inputs, outputs=outputs,
                              python_module=MODULE), function)


NODES = (
    _node("SamplerCustom", CUSTOM,
          (inp("model", "MODEL"), inp("add_noise", "BOOLEAN", default=True), inp("noise_seed", "INT", **SEED),
           inp("cfg", "FLOAT", **CFG), inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"),
           inp("sampler", "SAMPLER"), inp("sigmas", "SIGMAS"), inp("latent_image", "LATENT")),
          SAMPLED, sampler_custom),
    _node("BasicScheduler", CUSTOM + "/schedulers",
          (inp("model", "MODEL"), combo("scheduler", SCHEDULER_NAMES),
           inp("steps", "INT", default=20, min=1, max=10000),
           inp("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01)),
          out("SIGMAS"), basic_scheduler),
    _node("KSamplerSelect", CUSTOM + "/samplers", (combo("sampler_name", SAMPLER_NAMES),), out("SAMPLER"),
          ksampler_select),
    _node("BasicGuider", CUSTOM + "/guiders", (inp("model", "MODEL"), inp("conditioning", "CONDITIONING")),
          out("GUIDER"), basic_guider),
    _node("CFGGuider", CUSTOM + "/guiders",
          (inp("model", "MODEL"), inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"),
           inp("cfg", "FLOAT", **CFG)),
          out("GUIDER"), cfg_guider),
    _node("DisableNoise", CUSTOM + "/noise", (), out("NOISE"), disable_noise),
    _node("RandomNoise", CUSTOM + "/noise", (inp("noise_seed", "INT", **SEED),), out("NOISE"), random_noise),
    _node("SamplerCustomAdvanced", CUSTOM,
          (inp("noise", "NOISE"), inp("guider", "GUIDER"), inp("sampler", "SAMPLER"), inp("sigmas", "SIGMAS"),
           inp("latent_image", "LATENT")),
          SAMPLED, sampler_custom_advanced),
)
