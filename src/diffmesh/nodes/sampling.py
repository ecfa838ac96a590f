"""KSampler nodes: build a fully specified `SampleJob` on the graph side, run it through the engine.

Noise comes from the seed on the CPU generator for the whole batch and the sigma schedule from the
model's sigma table (spec §6.1, §6.4), both before any device is involved; so any placement or
parallel strategy the engine picks gives the same latent.
"""

from __future__ import annotations

import torch

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out

SAMPLER_NAMES = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "exp_heun_2_x0",
    "exp_heun_2_x0_sde", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm",
    "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2")
SCHEDULER_NAMES = ("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal")
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def model_sampling_for(model):
    """The sigma table a MODEL samples with, built on the graph side exactly as its worker builds it.

    `model` is a ModelHandle or a family id. A ModelSampling* node's override (`handle.sampling`)
    wins; a diffusion transformer otherwise uses its family's default for that file (Flux dev:
    ModelSamplingFlux with mu 1.15; schnell: flow shift 1); every SD family uses the scaled-linear
    1000-step table."""
    from diffmesh.models.dit import FAMILY_MODULES
    from diffmesh.sampling.model_sampling import FlowModelSampling, ModelSampling

    family = model if isinstance(model, str) else model.family
    if not isinstance(model, str):
        if model.sampling is not None:
            return FlowModelSampling(*model.sampling)
        if family in FAMILY_MODULES:
            from diffmesh.models.dit.model import sampling_args

            return FlowModelSampling(*sampling_args(model))
    elif family in FAMILY_MODULES:
        from diffmesh.models.dit import family as dit_family

        return FlowModelSampling(*dit_family(family).sampling)
    return ModelSampling(prediction_type="v" if family in ("sd2v", "sd2unclip") else "eps")


PREVIEW_METHODS = ("auto", "latent2rgb", "taesd")       # taesd previews fall back to latent2rgb


def _progress(ctx: NodeContext, family: str):
    """Engine progress events -> ctx.progress, with a latent2rgb preview when the prompt asks for one."""
    def on_event(event: dict) -> None:
        if event.get("type", "progress") != "progress":
            return
        preview, x0 = None, event.get("x0")
        if x0 is not None and ctx.options.get("preview_method") in PREVIEW_METHODS:
            from diffmesh.sampling.latent_formats import for_family, latent_to_rgb_preview

            preview = latent_to_rgb_preview(x0, for_family(family))
        ctx.progress(event["value"], event["max"], preview)
    return on_event


def fix_empty_latent(samples: torch.Tensor, family: str) -> torch.Tensor:
    """An empty latent of another format becomes one of the model's (ComfyUI's fix_empty_latent_channels):
    zeros repeated to its channel count (EmptyLatentImage's 4 channels for a 16-channel model) and a
    time axis for the 5-D Wan-format latents. Done before the noise is drawn, so the noise has the
    model's shape and equals ComfyUI's."""
    from diffmesh.sampling.conds import repeat_to_batch_size
    from diffmesh.sampling.latent_formats import for_family

    fmt = for_family(family)
    if fmt.channels != samples.shape[1] and torch.count_nonzero(samples) == 0:
        samples = repeat_to_batch_size(samples, fmt.channels, dim=1)
    if fmt.dimensions == 3 and samples.ndim == 4:
        samples = samples.unsqueeze(2)
    return samples


def run_sampler(ctx: NodeContext, model, seed: int, cfg: float, sampler_name: str, positive: list,
                negative: list, latent: dict, sigmas: torch.Tensor, add_noise: bool = True) -> tuple:
    """Shared part of both KSamplers; returns the new LATENT dict (spec §4.4: a copy of the input)."""
    from diffmesh.sampling.job import SampleJob
    from diffmesh.sampling.mask_functions import split_mask_fn
    from diffmesh.sampling.noise import prepare_noise

    model, mask_fn = split_mask_fn(model)
    samples = fix_empty_latent(latent["samples"], model.family)
    if len(sigmas) == 0:                                    # denoise 0 / start past the end: unchanged
        return ({**latent},)
    if add_noise:
        noise = prepare_noise(samples, seed, latent.get("batch_index"))
    else:
        noise = torch.zeros(samples.size(), dtype=samples.dtype, layout=samples.layout, device="cpu")
    job = SampleJob(latent=samples, noise=noise, sigmas=sigmas, sampler_name=sampler_name, cfg=float(cfg),
                    positive=positive, negative=negative, seed=int(seed), noise_mask=latent.get("noise_mask"),
                    denoise_mask_fn=mask_fn)
    result = ctx.engine.sample(model, job, _progress(ctx, model.family))
    return ({**latent, "samples": result.to("cpu", torch.float32)},)


def ksampler(ctx: NodeContext, model, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
             positive: list, negative: list, latent_image: dict, denoise: float = 1.0):
    from diffmesh.sampling.schedules import ksampler_sigmas

    sigmas = ksampler_sigmas(model_sampling_for(model), scheduler, sampler_name, steps, denoise)
    return run_sampler(ctx, model, seed, cfg, sampler_name, positive, negative, latent_image, sigmas)


def ksampler_advanced(ctx: NodeContext, model, add_noise: str, noise_seed: int, steps: int, cfg: float,
                      sampler_name: str, scheduler: str, positive: list, negative: list, latent_image: dict,
                      start_at_step: int, end_at_step: int, return_with_leftover_noise: str):
    from diffmesh.sampling.schedules import advanced_sigmas

    sigmas = advanced_sigmas(model_sampling_for(model), scheduler, sampler_name, steps,
                             start_at_step, end_at_step, return_with_leftover_noise != "enable")
    return run_sampler(ctx, model, noise_seed, cfg, sampler_name, positive, negative, latent_image, sigmas,
                       add_noise=add_noise != "disable")


CFG = dict(default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)

NODES = (
    NodeDef(NodeSchema(
        name="KSampler", display_name="KSampler", category="sampling",
        description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
        inputs=(
            inp("model", "MODEL", tooltip="The model used for denoising the input latent."),
            inp("seed", "INT", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                tooltip="The random seed used for creating the noise."),
            inp("steps", "INT", default=20, min=1, max=10000, tooltip="The number of steps used in the denoising process."),
            inp("cfg", "FLOAT", **CFG, tooltip=(
                "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher values "
                "result in images more closely matching the prompt however too high values will negatively impact "
                "quality.")),
            combo("sampler_name", SAMPLER_NAMES, tooltip=(
                "The algorithm used when sampling, this can affect the quality, speed, and style of the generated "
                "output.")),
            combo("scheduler", SCHEDULER_NAMES,
                  tooltip="The scheduler controls how noise is gradually removed to form the image."),
            inp("positive", "CONDITIONING",
                tooltip="The conditioning describing the attributes you want to include in the image."),
            inp("negative", "CONDITIONING",
                tooltip="The conditioning describing the attributes you want to exclude from the image."),
            inp("latent_image", "LATENT", tooltip="The latent image to denoise."),
            inp("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=(
                "The amount of denoising applied, lower values will maintain the structure of the initial image "
                "allowing for image to image sampling."))),
        outputs=out("LATENT"), output_tooltips=("The denoised latent.",)), ksampler),
    NodeDef(NodeSchema(
        name="KSamplerAdvanced", display_name="KSampler (Advanced)", category="sampling",
        inputs=(
            inp("model", "MODEL"), combo("add_noise", ("enable", "disable")),
            inp("noise_seed", "INT", default=0, min=0, max=SEED_MAX, control_after_generate=True),
            inp("steps", "INT", default=20, min=1, max=10000), inp("cfg", "FLOAT", **CFG),
            combo("sampler_name", SAMPLER_NAMES), combo("scheduler", SCHEDULER_NAMES),
            inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"), inp("latent_image", "LATENT"),
            inp("start_at_step", "INT", default=0, min=0, max=10000),
            inp("end_at_step", "INT", default=10000, min=0, max=10000),
            combo("return_with_leftover_noise", ("disable", "enable"))),
        outputs=out("LATENT")), ksampler_advanced),
)
