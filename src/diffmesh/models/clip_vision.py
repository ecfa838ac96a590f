"""CLIP-vision image encoders (CLIPVisionLoader / CLIPVisionEncode) with ComfyUI's facts.

Files: the transformers layout ComfyUI's `clip_vision/` files use (`vision_model.*`,
`visual_projection.weight`), an open_clip `visual.*` file, or the `embedder.model.visual.*` part of an
SD2.1 unCLIP checkpoint (open_clip keys are converted as ComfyUI's `convert_to_transformers` does).
The kind is told by ComfyUI's markers (layer 47 -> ViT-bigG, layer 30 -> ViT-H, layer 22 -> ViT-L,
or SigLIP when layer 0 is 1152 wide); a file matching none of them (the tiny test files) is read by its
shapes: without a class token it is a SigLIP encoder, with one a CLIP encoder. Widths, depth, patch
and image size always come from the tensors; activation, heads and normalisation from the shipped
config of the kind (`data/clip_vision/configs.json`, ComfyUI's `clip_vision_config_*.json`).

The network is transformers' `CLIPVisionModelWithProjection` / `SiglipVisionModel` (no pooling head,
as ComfyUI's SigLIP). `encode_image` returns a `ClipVisionOutput` with ComfyUI's fields.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from typing import Any

import torch
from torch import nn

from diffmesh.errors import ModelError
from diffmesh.models.component import DeviceAndDtype

# prefixes of a vision tower in the files ComfyUI reads: transformers layout, open_clip, unCLIP checkpoint
OPEN_CLIP_PREFIXES = ("visual.", "embedder.model.visual.")
LAYER_KEY = "vision_model.encoder.layers.{}.layer_norm1.weight"


class ClipVisionOutput:
    """CLIP_VISION_OUTPUT: what CLIPVisionEncode returns (ComfyUI's `clip_vision.Output`).

    last_hidden_state (B, N, D): the last layer's tokens (SigLIP: after its final norm);
    image_embeds (B, P) projected pooled output (SigLIP: the normed tokens, as ComfyUI);
    penultimate_hidden_states (B, N, D): the output of the second-to-last layer;
    all_hidden_states (B, L, N, D): every layer's output (SigLIP only, as ComfyUI);
    image_sizes: [(3, H, W)] per image fed to the encoder; mm_projected: None (no LLaVA projector).
    Fields read as attributes or as `output["name"]`, as ComfyUI's Output allows."""

    def __init__(self, **fields: Any):
        self.mm_projected = None
        for name, value in fields.items():
            setattr(self, name, value)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return f"ClipVisionOutput({shapes})"


def shipped_configs() -> dict[str, dict]:
    """The kinds ComfyUI detects, by name ("vit_h", "vit_g", "vit_l", "vit_l_336", "siglip_384", ...)."""
    text = resources.files("diffmesh.models").joinpath("data/clip_vision/configs.json").read_text()
    return json.loads(text)


# ------------------------------------------------------------------ key formats and detection

def _convert_open_clip(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """open_clip `visual.*` names -> transformers names (q, k, v split out of in_proj)."""
    renames = {"class_embedding": "vision_model.embeddings.class_embedding",
               "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
               "positional_embedding": "vision_model.embeddings.position_embedding.weight",
               "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
               "ln_post.weight": "vision_model.post_layernorm.weight",
               "ln_post.bias": "vision_model.post_layernorm.bias"}
    blocks = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
              "attn.out_proj": "self_attn.out_proj"}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in renames:
            out[renames[name]] = value
        elif name == "proj":
            out["visual_projection.weight"] = value.transpose(0, 1)
        elif name.startswith("transformer.resblocks."):
            index, rest = name[len("transformer.resblocks."):].split(".", 1)
            base = f"vision_model.encoder.layers.{index}."
            part, suffix = rest.rsplit(".", 1)
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                suffix = rest.rsplit("_", 1)[1]
                for i, which in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[f"{base}self_attn.{which}.{suffix}"] = value.chunk(3, dim=0)[i]
            elif part in blocks:
                out[f"{base}{blocks[part]}.{suffix}"] = value
    return out


def vision_state_dict(sd: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """The vision tower of a file in transformers names (only its keys)."""
    for prefix in OPEN_CLIP_PREFIXES:
        if f"{prefix}transformer.resblocks.0.attn.in_proj_weight" in sd:
            return _convert_open_clip(sd, prefix)
    out = {k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection."))}
    if LAYER_KEY.format(0) not in out:
        raise ModelError("no CLIP-vision encoder in this file (no vision_model.encoder.layers.0 or "
                         "visual.transformer.resblocks.0 keys)", where=where,
                         fix="put a CLIP-vision model (e.g. clip_vision_h.safetensors) in models/clip_vision")
    return out


def detect_kind(sd: dict[str, torch.Tensor], where: str) -> str:
    """ComfyUI's markers, in its order; a file matching none is told by its class token."""
    if LAYER_KEY.format(47) in sd:
        return "vit_g"
    if LAYER_KEY.format(30) in sd:
        return "vit_h"
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    if LAYER_KEY.format(22) in sd:
        if sd[LAYER_KEY.format(0)].shape[0] == 1152:
            if sd["vision_model.embeddings.patch_embedding.weight"].ndim == 2:
                raise ModelError("SigLIP 2 NaFlex vision encoders are not supported yet", where=where,
                                 fix="use a CLIP-vision or SigLIP (384/512) file")
            if positions in (729, 1024):
                return "siglip_384" if positions == 729 else "siglip_512"
        elif positions == 577:
            return "vit_l_336"
        else:
            return "vit_l"
    return "siglip_384" if "vision_model.embeddings.class_embedding" not in sd else "vit_h"


def config_for(sd: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """The shipped config of the file's kind with every shape fact read from the tensors."""
    kind = detect_kind(sd, where)
    config = dict(shipped_configs()[kind], kind=kind)
    patch = sd["vision_model.embeddings.patch_embedding.weight"]
    positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
    grid = positions - (1 if "vision_model.embeddings.class_embedding" in sd else 0)
    side = math.isqrt(grid)
    if side * side != grid:
        raise ModelError(f"{positions} position embeddings do not make a square grid of patches", where=where,
                         fix="the file is damaged or not a CLIP-vision model")
    layers = 0
    while LAYER_KEY.format(layers) in sd:
        layers += 1
    if config["image_size"] // patch.shape[-1] != side:     # SigLIP 384 / 14 = 27.4: keep 384 when it fits
        config["image_size"] = side * patch.shape[-1]
    config.update(hidden_size=patch.shape[0], patch_size=patch.shape[-1], num_hidden_layers=layers,
                  intermediate_size=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0])
    if "visual_projection.weight" in sd:
        config["projection_dim"] = sd["visual_projection.weight"].shape[0]
    if config["hidden_size"] % config["num_attention_heads"]:
        raise ModelError(f"width {config['hidden_size']} does not split into {config['num_attention_heads']} heads",
                         where=where, fix="unsupported CLIP-vision variant")
    return config


# ------------------------------------------------------------------ preprocessing

def clip_preprocess(image: torch.Tensor, size: int, mean: list[float], std: list[float],
                    crop: bool = True) -> torch.Tensor:
    """(B, H, W, C) in [0, 1] -> (B, 3, size, size) normalised pixels, as ComfyUI's `clip_preprocess`.

    crop: scale the shorter side to `size` (bicubic, antialiased), then cut the centre; else resize
    to a square. Pixels are quantised to 8 bits before normalising, as ComfyUI does."""
    pixels = image[..., :3].movedim(-1, 1)                                     # (B, 3, H, W)
    height, width = pixels.shape[-2:]
    if (height, width) != (size, size):
        if crop:
            scale = size / min(height, width)
            target = (round(scale * height), round(scale * width))
        else:
            target = (size, size)
        pixels = torch.nn.functional.interpolate(pixels, size=target, mode="bicubic", antialias=True)
        top, left = (pixels.shape[2] - size) // 2, (pixels.shape[3] - size) // 2
        pixels = pixels[:, :, top:top + size, left:left + size]
    pixels = torch.clip(255.0 * pixels, 0, 255).round() / 255.0
    mean_t = torch.tensor(mean, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, device=pixels.device, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - mean_t) / std_t


# ------------------------------------------------------------------ the network

def _network(config: dict[str, Any]) -> nn.Module:
    common = dict(hidden_size=config["hidden_size"], intermediate_size=config["intermediate_size"],
                  num_hidden_layers=config["num_hidden_layers"], num_attention_heads=config["num_attention_heads"],
                  image_size=config["image_size"], patch_size=config["patch_size"], hidden_act=config["hidden_act"],
                  layer_norm_eps=config.get("layer_norm_eps", 1e-5), num_channels=3)
    if config["model_type"] == "siglip_vision_model":
        from transformers import SiglipVisionConfig, SiglipVisionModel

        return SiglipVisionModel(SiglipVisionConfig(vision_use_head=False, **common))
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=config.get("projection_dim", 512), **common))


def _fit_names(sd: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """File names -> the module's names (transformers' SigLIP model may hold its tower without the
    `vision_model.` prefix the files use)."""
    if any(k.startswith("vision_model.") for k in wanted):
        return sd
    return {k[len("vision_model."):] if k.startswith("vision_model.") else k: v for k, v in sd.items()}


def build_network(config: dict[str, Any], sd: dict[str, torch.Tensor], where: str, device: torch.device,
                  dtype: torch.dtype) -> nn.Module:
    """The network with the file's weights (built on the meta device: no random init)."""
    with torch.device("meta"):
        module = _network(config)
    sd = _fit_names(sd, set(module.state_dict()))
    missing, _ = module.load_state_dict(sd, strict=False, assign=True)
    if missing:
        raise ModelError(f"CLIP-vision weights missing: {list(missing)[:4]}", where=where,
                         fix="the file is incomplete or an unsupported variant")
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta and name.endswith("position_ids"):      # non-persistent: not in any file
            owner = module.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape),
                                  persistent=False)
    module = nn.Module.to(module, device=device, dtype=dtype)
    return module.eval().requires_grad_(False)


class ClipVisionEncoder(DeviceAndDtype, nn.Module):
    """A loaded CLIP-vision model: `encode_image(image, crop)` -> `ClipVisionOutput` (CPU float32)."""

    def __init__(self, network: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.network = network
        self.config = config

    @property
    def siglip(self) -> bool:
        return self.config["model_type"] == "siglip_vision_model"

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        cfg = self.config
        pixels = clip_preprocess(image.to(self.device).float(), cfg["image_size"], cfg["image_mean"],
                                 cfg["image_std"], crop)
        out = self.network(pixel_values=pixels.to(self.dtype), output_hidden_states=True)
        hidden = out.hidden_states                  # embeddings, then each layer's output
        result = ClipVisionOutput(last_hidden_state=out.last_hidden_state.float().cpu(),
                                  image_sizes=[pixels.shape[1:]] * pixels.shape[0])
        if self.siglip:
            layers = torch.stack(hidden[1:], dim=1).float().cpu()              # (B, L, N, D)
            result.image_embeds = result.last_hidden_state
            result.penultimate_hidden_states = layers[:, -2]
            result.all_hidden_states = layers
        else:
            result.image_embeds = out.image_embeds.float().cpu()
            result.penultimate_hidden_states = hidden[-2].float().cpu()
        return result


def prepare(sd: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """The vision tower of a whole file's tensors, in transformers names, and its config."""
    tower = vision_state_dict(sd, where)
    return {"sd": tower, "config": config_for(tower, where)}


def build_clip_vision(handle, device: torch.device, dtype: torch.dtype, store) -> ClipVisionEncoder:
    """The encoder of a CLIP_VISION handle (component "clip", family "clip_vision") on `device`;
    the tower is kept in the `WeightStore` under the file's key until the build is done."""
    from pathlib import Path

    key = str(Path(handle.path).resolve())
    base = store.derived((key, "clip", "vision"), lambda: prepare(store.state_dict(handle.path), handle.path))
    return ClipVisionEncoder(build_network(base["config"], base["sd"], handle.path, device, dtype), base["config"])
