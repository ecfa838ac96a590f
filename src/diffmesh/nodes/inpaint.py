"""Inpainting and turbo nodes: InpaintModelConditioning (nodes.py), DifferentialDiffusion
(comfy_extras/nodes_differential_diffusion.py) and SDTurboScheduler (nodes_custom_sampler.py),
with ComfyUI's names, inputs, defaults and outputs.

InpaintModelConditioning puts `concat_latent_image` and `concat_mask` on both conditionings; an
inpainting UNet (extra input channels) concatenates them to its input (`models.inpaint`), any other
model ignores them. DifferentialDiffusion sets the MODEL's denoise-mask function
(`sampling.mask_functions`), which the sampler applies to the latent's noise mask at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, OutputSpec, inp, out
from diffmesh.nodes.conditioning import set_values


def inpaint_model_conditioning(ctx: NodeContext, positive: list, negative: list, vae, pixels: torch.Tensor,
                               mask: torch.Tensor, noise_mask: bool = True):
    """Grey (0.5) the masked pixels of the image cropped to multiples of 8, encode it as the
    concat image; the latent is the whole image's, with the pixel-size mask as noise mask when asked."""
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float(),
                         size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")     # (B,1,H,W)
    masked = pixels.clone()
    if masked.shape[1] != h or masked.shape[2] != w:
        dy, dx = (masked.shape[1] % 8) // 2, (masked.shape[2] % 8) // 2
        masked = masked[:, dy:h + dy, dx:w + dx, :]
        mask = mask[:, :, dy:h + dy, dx:w + dx]
    keep = (1.0 - mask.round()).squeeze(1)[..., None]                                  # (B,H,W,1)
    masked[..., :3] = (masked[..., :3] - 0.5) * keep + 0.5
    concat_latent = ctx.engine.vae_encode(vae, masked)
    latent = {"samples": ctx.engine.vae_encode(vae, pixels)}      # the encoder crops as ComfyUI's VAE does
    if noise_mask:
        latent["noise_mask"] = mask
    values = {"concat_latent_image": concat_latent, "concat_mask": mask}
    return set_values(positive, values), set_values(negative, values), latent


def differential_diffusion(ctx: NodeContext, model, strength: float = 1.0):
    return (model.with_options(denoise_mask_fn=("differential", float(strength))),)


def sd_turbo_scheduler(ctx: NodeContext, model, steps: int, denoise: float):
    """SD-Turbo's timesteps 999, 899, ..., 99 (the last `steps` from 10 - int(10 * denoise)), as sigmas."""
    from diffmesh.nodes.sampling import model_sampling_for

    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    sigmas = model_sampling_for(model).sigma(timesteps)
    return (torch.cat([sigmas, sigmas.new_zeros([1])]),)


NODES = (
    NodeDef(NodeSchema(
        name="InpaintModelConditioning", display_name="InpaintModelConditioning", category="conditioning/inpaint",
        inputs=(inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"), inp("vae", "VAE"),
                inp("pixels", "IMAGE"), inp("mask", "MASK"),
                inp("noise_mask", "BOOLEAN", default=True, tooltip=(
                    "Add a noise mask to the latent so sampling will only happen within the mask. Might improve "
                    "results or completely break things depending on the model."))),
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative"),
                 OutputSpec("LATENT", "latent"))),
        inpaint_model_conditioning),
    NodeDef(NodeSchema(
        name="DifferentialDiffusion", display_name="Differential Diffusion", category="_for_testing",
        inputs=(inp("model", "MODEL"),
                inp("strength", "FLOAT", "optional", default=1.0, min=0.0, max=1.0, step=0.01)),
        outputs=out("MODEL"), experimental=True, python_module="comfy_extras.nodes_differential_diffusion"),
        differential_diffusion),
    NodeDef(NodeSchema(
        name="SDTurboScheduler", display_name="SDTurboScheduler", category="sampling/custom_sampling/schedulers",
        inputs=(inp("model", "MODEL"), inp("steps", "INT", default=1, min=1, max=10),
                inp("denoise", "FLOAT", default=1.0, min=0, max=1.0, step=0.01)),
        outputs=out("SIGMAS"), python_module="comfy_extras.nodes_custom_sampler"),
        sd_turbo_scheduler),
)
