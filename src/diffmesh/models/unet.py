"""The denoising network as sampling sees it (`protocols.DiffusionModel`).

Wraps a diffusers `UNet2DConditionModel` built from an original-layout checkpoint and carries the
facts sampling needs: the model sampling (prediction type, sigma table) and the latent format.
Inputs and outputs are float32; casting to the weight dtype happens here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from diffmesh.models.component import DeviceAndDtype
from diffmesh.models.control_residuals import unet_control_kwargs

from diffmesh.models.families.common import FamilySpec


class UNetModel(DeviceAndDtype, nn.Module):
    def __init__(self, unet: nn.Module, family: FamilySpec, model_sampling: Any, latent_format: Any):
        super().__init__()
        self.unet = unet
        self.family = family
        self.model_sampling = model_sampling
        self.latent_format = latent_format
        cfg = unet.config
        self.pooled_width = None
        self._gligen: dict[str, Any] = {}   # the GLIGEN file of the latest boxes: {"path", "patch"} (not a submodule)
        if family.sdxl_conditioning:
            self.pooled_width = int(cfg.projection_class_embeddings_input_dim) - 6 * int(cfg.addition_time_embed_dim)

    @property
    def adm_channels(self) -> int | None:
        """Width of an SD2.1 unCLIP UNet's class-embedding input (None for other UNets)."""
        return int(self.unet.config.projection_class_embeddings_input_dim) if self.family.extra.get("unclip") else None

    runs_gligen = True                      # sampling.conds: GLIGEN boxes are run, not refused

    @property
    def concat_channels(self) -> int:
        """Input channels beyond the latent's (5 for an SD1.5 inpainting UNet: mask + masked-image latent)."""
        return max(0, int(self.unet.config.in_channels) - int(getattr(self.latent_format, "channels", 4)))

    def extra_conds(self, options: dict[str, Any], x_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """The family's inputs, and GLIGEN's box tensors (`models.gligen.box_tensors`) when the
        conditioning carries GLIGENTextBoxApply boxes (only that conditioning runs the fusers, as ComfyUI)."""
        extras = self._family_conds(options, x_shape)
        if self.concat_channels:        # inpainting UNet: ComfyUI's concat_cond, fed on every call
            from diffmesh.models.inpaint import concat_cond

            extras["c_concat"] = concat_cond(options, x_shape, self.latent_format)
        if options.get("gligen") is not None:
            from diffmesh.models.gligen import box_tensors, load_patch

            _, model, boxes = options["gligen"]
            if self._gligen.get("path") != model.path:
                self._gligen = {"path": model.path, "patch": load_patch(model, self.device, self.dtype)}
            tensors = box_tensors((1,) + tuple(x_shape[1:]), boxes, model.key_dim)
            extras.update({f"gligen_{k}": v for k, v in tensors.items()})
        return extras

    def _family_conds(self, options: dict[str, Any], x_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        """SDXL: text_embeds (1, P) = pooled output, time_ids (1, 6) = size conditioning.
        SD2.1 unCLIP: y (1, adm) from the unCLIPConditioning entries and the sampler's seed."""
        if self.adm_channels is not None:
            from diffmesh.models.unclip import MERGE_NOISE, unclip_adm

            return {"y": unclip_adm(options.get("unclip_conditioning"), self.adm_channels, int(options.get("seed", 0)),
                                    options.get("unclip_noise_augment_merge", MERGE_NOISE))}
        if not self.family.sdxl_conditioning:
            return {}
        from diffmesh.models.families.sdxl import size_conditioning

        pooled = options.get("pooled_output")
        if options.get("unclip_conditioning") is not None:     # Revision: ComfyUI's sdxl_pooled (merge level 0)
            from diffmesh.models.unclip import unclip_adm

            pooled = unclip_adm(options["unclip_conditioning"], 2 * self.pooled_width, int(options.get("seed", 0)),
                                0.0)[:, :self.pooled_width]
        if pooled is None:
            pooled = torch.zeros((1, self.pooled_width))  # ComfyUI also uses zeros when no pooled output
        return {"text_embeds": pooled.float().reshape(-1, pooled.shape[-1])[:1].cpu(),
                "time_ids": size_conditioning(options, x_shape)}

    @torch.no_grad()
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                control: dict | None = None, **extra: torch.Tensor) -> torch.Tensor:
        """Raw eps/v prediction. x (B,C,H,W), timestep (B,), context (B,T,D); float32 in and out.

        `control` is ComfyUI's ControlNet / T2I-adapter dict (`sampling.control`), turned into diffusers'
        residual arguments by `models.control_residuals`."""
        dev, dt = self.device, self.dtype
        if "c_concat" in extra:             # inpainting UNet: [latent, mask, masked image] along channels
            x = torch.cat([x, extra["c_concat"].to(x.device, x.dtype)], dim=1)
        residuals = unet_control_kwargs(control, self.unet.config, x, dev, dt)
        added = None
        if self.family.sdxl_conditioning:
            b = x.shape[0]
            text_embeds = extra.get("text_embeds")
            time_ids = extra.get("time_ids")
            if text_embeds is None:
                text_embeds = torch.zeros((b, self.pooled_width))
            if time_ids is None:
                time_ids = torch.tensor([[768.0, 768.0, 0.0, 0.0, 768.0, 768.0]]).expand(b, 6)
            added = {"text_embeds": text_embeds.to(dev, dt), "time_ids": time_ids.to(dev, dt)}
        timestep = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).to(dev)
        if timestep.numel() == 1 and x.shape[0] > 1:
            timestep = timestep.expand(x.shape[0])
        if self.adm_channels is not None:           # unCLIP: zeros without image conditioning, as ComfyUI
            y = extra.get("y")
            y = torch.zeros((x.shape[0], self.adm_channels)) if y is None else y.expand(x.shape[0], -1)
            residuals = {**residuals, "class_labels": y.to(dev, dt)}
        gligen = None
        if "gligen_boxes" in extra:         # diffusers' GLIGEN path: position net -> objs -> each block's fuser
            gligen = {"gligen": {"boxes": extra["gligen_boxes"].to(dev, dt), "masks": extra["gligen_masks"].to(dev, dt),
                                 "positive_embeddings": extra["gligen_embeddings"].to(dev, dt)}}
        with self._gligen["patch"].attached(self.unet) if gligen else contextlib.nullcontext():
            out = self.unet(x.to(dev, dt), timestep, encoder_hidden_states=context.to(dev, dt),
                            added_cond_kwargs=added, cross_attention_kwargs=gligen, return_dict=False, **residuals)[0]
        return out.float()

