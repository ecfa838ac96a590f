"""ControlNet files (SD1.x, SD2.x, SDXL) as runnable networks.

A CONTROL_NET value is a `ControlNetRef`: the file and its options, hashable and picklable like a
`ModelHandle`; a worker builds the network next to the UNet (`build_controlnet`). Two key layouts
load, as in ComfyUI's `load_controlnet_state_dict`:

- ComfyUI's / the original cldm layout: `input_blocks.*`, `middle_block.*`, `zero_convs.N.0.*`,
  `input_hint_block.{0,2,..,14}.*`, `middle_block_out.0.*` (optionally under `control_model.`;
  a "diff" ControlNet also has a `difference` key and stores weights relative to its base UNet);
- diffusers' layout: `controlnet_down_blocks.N.*`, `controlnet_mid_block.*`,
  `controlnet_cond_embedding.*`.

Both run as diffusers' `ControlNetModel`, with the config read from the shapes (never from a hub).
T2I-adapter files (ComfyUI's `t2i_adapter/` folder is listed with `controlnet/`) load through the same
loader and build a `models.t2i_adapter.AdapterNetwork` instead.
The network returns ComfyUI's control dict: "output" = one residual per UNet input block, added to
the skip connections the output blocks read; "middle" = one residual added after the middle block.
Strength, step range, hint scaling and chaining are the sampler's business (`sampling.control`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffmesh.errors import ModelError
from diffmesh.models.component import DeviceAndDtype
from diffmesh.models.handle import ModelHandle

UNION_CONTROLNET_TYPES = {"openpose": 0, "depth": 1, "hed/pidi/scribble/ted": 2, "canny/lineart/anime_lineart/mlsd": 3,
                          "normal": 4, "segment": 5, "tile": 6, "repaint": 7}


@dataclass(frozen=True)
class ControlNetRef:
    """A ControlNet file as a value that crosses nodes and processes (the CONTROL_NET type).

    global_average_pooling: ComfyUI turns it on for files named `*_shuffle` (the shuffle ControlNet)
    base:         the MODEL of DiffControlNetLoader; a diff ControlNet's weights are added to its UNet's
    control_type: SetUnionControlNetType's choice (union ControlNets only; other files ignore it)
    """

    path: str
    global_average_pooling: bool = False
    base: ModelHandle | None = None
    control_type: tuple[int, ...] = ()
    dtype: str | None = None

    # the memory manager places a ControlNet with the UNet's precision settings
    component = "unet"


def ref_for_file(path: str | Path, base: ModelHandle | None = None) -> ControlNetRef:
    """ComfyUI's `load_controlnet` options from the file name: `_shuffle` files pool globally."""
    stem = Path(path).stem
    pooling = stem.endswith("_shuffle") or stem.endswith("_shuffle_fp16")
    return ControlNetRef(str(path), global_average_pooling=pooling, base=base)


# ---------------------------------- layouts and configs ---------------------------------------

def layout_of(keys) -> str:
    """"diffusers" | "ldm" | "ldm_pth" (under `control_model.`) | "t2i"; a clear error for anything else."""
    keys = set(keys)
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        if "control_add_embedding.linear_1.bias" in keys:
            raise ModelError("union ControlNets (ControlNet++ / ProMax) are not supported yet",
                             where="ControlNetLoader", fix="use a single-type ControlNet file")
        return "diffusers"
    if "control_model.zero_convs.0.0.weight" in keys:
        return "ldm_pth"
    if "zero_convs.0.0.weight" in keys:
        return "ldm"
    from diffmesh.models.t2i_adapter import is_adapter

    if is_adapter(keys):
        return "t2i"
    if "lora_controlnet" in keys:
        raise ModelError("Control-LoRA files are not supported yet", where="ControlNetLoader",
                         fix="use a full ControlNet file")
    raise ModelError("not a ControlNet or T2I-adapter for SD1.x/SD2.x/SDXL (no zero_convs / controlnet_down_blocks "
                     "/ conv_in keys); "
                     "transformer ControlNets (SD3, Flux, Qwen-Image) are not supported yet",
                     where="ControlNetLoader", fix="pick a ControlNet file made for the checkpoint's family")


def _family_of(linear_proj: bool, has_adm: bool) -> str:
    """SD1 ControlNets use 8 heads everywhere, SD2 and SDXL a head size of 64 (as their UNets).
    SDXL has the ADM label embedding; SD2 linear attention projections; SD1 1x1 convs."""
    return "sdxl" if has_adm else ("sd2" if linear_proj else "sd1")


def ldm_config(shapes: dict[str, tuple]) -> dict:
    """diffusers ControlNetModel config from cldm-layout shapes (no `control_model.` prefix)."""
    from diffmesh.models.families import common, family_spec

    linear = len(next((v for k, v in shapes.items() if k.endswith("proj_in.weight")), (0, 0, 1, 1))) == 2
    family = family_spec(_family_of(linear, "label_emb.0.0.weight" in shapes))
    # the UNet config reader wants the output conv only for out_channels, which a ControlNet lacks
    unet = common.unet_config_from_shapes({**shapes, "out.2.weight": shapes["input_blocks.0.0.weight"]}, family)
    return _controlnet_config(unet, shapes["input_hint_block.0.weight"][1],
                              _hint_channels([shapes[f"input_hint_block.{i}.weight"][0] for i in (0, 4, 8, 12)]))


def _hint_channels(outs: list[int]) -> tuple[int, ...]:
    return tuple(int(c) for c in outs)


def _controlnet_config(unet: dict, hint_channels: int, embedding_channels: tuple[int, ...]) -> dict:
    keep = ("in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "mid_block_type",
            "only_cross_attention", "block_out_channels", "layers_per_block", "downsample_padding",
            "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
            "transformer_layers_per_block", "attention_head_dim", "use_linear_projection", "upcast_attention",
            "addition_embed_type", "addition_time_embed_dim", "projection_class_embeddings_input_dim")
    cfg = {k: unet[k] for k in keep if k in unet}
    cfg.update(conditioning_channels=int(hint_channels), conditioning_embedding_out_channels=embedding_channels)
    return cfg


def diffusers_config(shapes: dict[str, tuple]) -> dict:
    """ControlNetModel config from diffusers-layout shapes."""
    from diffmesh.models.families import family_spec

    levels = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("down_blocks."))
    channels, depths, nrb = [], [], 0
    for lvl in range(levels):
        channels.append(shapes[f"down_blocks.{lvl}.resnets.0.conv1.weight"][0])
        nrb = max(nrb, 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith(f"down_blocks.{lvl}.resnets.")))
        tb = [int(k.split(".")[5]) for k in shapes if k.startswith(f"down_blocks.{lvl}.attentions.0.transformer_blocks.")]
        depths.append(1 + max(tb) if tb else 0)
    mid = [int(k.split(".")[4]) for k in shapes if k.startswith("mid_block.attentions.0.transformer_blocks.")]
    ctx = next(v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight"))
    linear = len(next(v for k, v in shapes.items() if k.endswith("proj_in.weight"))) == 2
    has_adm = "add_embedding.linear_1.weight" in shapes
    family = family_spec(_family_of(linear, has_adm))
    unet = {
        "in_channels": shapes["conv_in.weight"][1], "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "mid_block_type": "UNetMidBlock2DCrossAttn", "only_cross_attention": False, "block_out_channels": channels,
        "layers_per_block": nrb, "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu",
        "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": ctx, "use_linear_projection": linear,
        "attention_head_dim": [family.fixed_heads or max(1, c // 64) for c in channels], "upcast_attention": False,
        "transformer_layers_per_block": [d or 1 for d in depths[:-1]] + [(1 + max(mid)) if mid else (depths[-1] or 1)],
    }
    if has_adm:
        unet.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                    projection_class_embeddings_input_dim=shapes["add_embedding.linear_1.weight"][1])
    n_blocks = 1 + max(int(k.split(".")[2]) for k in shapes if k.startswith("controlnet_cond_embedding.blocks."))
    embedding = [shapes["controlnet_cond_embedding.conv_in.weight"][0]]
    embedding += [shapes[f"controlnet_cond_embedding.blocks.{i}.weight"][0] for i in range(1, n_blocks, 2)]
    return _controlnet_config(unet, shapes["controlnet_cond_embedding.conv_in.weight"][1], _hint_channels(embedding))


def convert_ldm(sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """cldm keys -> diffusers ControlNetModel keys (diffusers' converter, plus SDXL's ADM embedding,
    which that converter leaves out)."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    out = convert_controlnet_checkpoint(dict(sd), config)
    for i, name in ((0, "linear_1"), (2, "linear_2")):
        for s in ("weight", "bias"):
            if f"label_emb.0.{i}.{s}" in sd:
                out[f"add_embedding.{name}.{s}"] = sd[f"label_emb.0.{i}.{s}"]
    return {k: v for k, v in out.items() if v is not None}


def _apply_difference(sd: dict[str, torch.Tensor], base: ModelHandle, store) -> dict[str, torch.Tensor]:
    """A diff ControlNet stores `weight - base UNet weight`: add the base back (ComfyUI adds
    `diffusion_model.<key>` of the loaded model to every `control_model.<key>` it has)."""
    from diffmesh.models import detect
    from diffmesh.models.families import common

    base_sd = store.state_dict(base.path)
    prefix = detect.unet_prefix(base_sd)
    if prefix is None:
        raise ModelError("the MODEL given to DiffControlNetLoader has no UNet", where=base.path,
                         fix="connect the MODEL output of an SD1.x/SD2.x/SDXL checkpoint loader")
    unet = common.strip_prefix(base_sd, prefix)
    return {k: (v + unet[k].to(v.dtype)) if k in unet else v for k, v in sd.items()}


def controlnet_weights(ref: ControlNetRef, store) -> tuple[dict, dict[str, torch.Tensor]]:
    """(ControlNetModel config, diffusers-layout state dict) of the file, base weights added for diff files."""
    from diffmesh.models.families import common

    raw = store.state_dict(ref.path)
    layout = layout_of(raw.keys())
    if layout == "diffusers":
        sd = {k: v for k, v in raw.items()}
        return diffusers_config({k: tuple(v.shape) for k, v in sd.items()}), sd
    sd = common.strip_prefix(raw, "control_model.") if layout == "ldm_pth" else dict(raw)
    if layout == "ldm_pth" and "difference" in raw:
        if ref.base is None:
            raise ModelError("this is a diff ControlNet: its weights are differences to a base model",
                             where=ref.path, fix="load it with DiffControlNetLoader and connect the MODEL")
        sd = _apply_difference(sd, ref.base, store)
    config = ldm_config({k: tuple(v.shape) for k, v in sd.items()})
    return config, convert_ldm(sd, config)


# ---------------------------------- the network ------------------------------------------------

class ControlNetNetwork(DeviceAndDtype, nn.Module):
    """diffusers' ControlNetModel, called the way ComfyUI's cldm ControlNet is called."""

    kind = "controlnet"

    def __init__(self, net: nn.Module, ref: ControlNetRef):
        super().__init__()
        self.net = net
        self.ref = ref

    @torch.no_grad()
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, hint: torch.Tensor,
                **extra: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """x: the UNet input (already scaled by c_in), (B,C,h,w); hint (Bh,3,8h,8w); SDXL: text_embeds, time_ids."""
        dev, dt = self.device, self.dtype
        added = None
        if getattr(self.net.config, "addition_embed_type", None) == "text_time":
            added = {k: extra[k].to(dev, dt) for k in ("text_embeds", "time_ids")}
        timestep = torch.as_tensor(timestep).reshape(-1).to(dev, dt)
        down, mid = self.net(x.to(dev, dt), timestep, encoder_hidden_states=context.to(dev, dt),
                             controlnet_cond=hint.to(dev, dt), conditioning_scale=1.0,
                             added_cond_kwargs=added, return_dict=False)
        return {"output": list(down), "middle": [mid]}


def build_controlnet(ref: ControlNetRef, device: Any, dtype: Any, store):
    """The runnable network of `ref` on `device` (the worker calls this through its memory manager):
    a `ControlNetNetwork`, or a `t2i_adapter.AdapterNetwork` for T2I-adapter files."""
    from diffusers import ControlNetModel

    from diffmesh.models.load import _materialize, resolve_dtype

    device = torch.device(device)
    raw = store.state_dict(ref.path)
    if layout_of(raw.keys()) == "t2i":
        from diffmesh.models.t2i_adapter import AdapterNetwork, build_adapter

        return AdapterNetwork(build_adapter(raw, ref.path).to(device), ref)
    torch_dtype = resolve_dtype(dtype if dtype is not None else ref.dtype, device, "unet")
    key = (str(Path(ref.path).resolve()), "controlnet", ref.base.path if ref.base else None)
    config, sd = store.derived(key, lambda: controlnet_weights(ref, store))
    net = _materialize(lambda: ControlNetModel(**config), sd, ref.path, device, torch_dtype)
    network = ControlNetNetwork(net, ref)
    network.compute_dtype = torch_dtype
    return network
