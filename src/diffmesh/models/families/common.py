"""What every family shares: the spec dataclasses, diffusers UNet/VAE configs inferred from the
original-layout shapes, and key conversion to the module names of our components.

Configs come from shapes (never from a hub), which is why tiny test checkpoints load through the
same path as real ones. What shapes cannot tell (attention head counts, activations, default
text-encoder layer) is a family fact, stated in the family modules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from diffmesh.errors import ModelError


@dataclass(frozen=True)
class TextEncoderSpec:
    """One CLIP text tower of a checkpoint.

    layout:   "hf" (CLIPTextModel keys) or "open_clip" (OpenCLIP text tower keys)
    layer:    default output layer (-1 last, -2 penultimate); CLIPSetLastLayer overrides it
    layer_norm_hidden: apply the final layer norm to the selected hidden layer
    pad_token: token used to pad chunks to 77 (ComfyUI: end token for CLIP-L, 0 for OpenCLIP)
    lora_names: kohya / PEFT prefixes that address this encoder in LoRA files
    """

    name: str
    prefix: str
    layout: str
    activation: str
    layer: int
    layer_norm_hidden: bool
    pad_token: int
    lora_names: tuple[str, ...]


@dataclass(frozen=True)
class FamilySpec:
    name: str
    prediction_type: str                       # "eps" | "v"
    text_encoders: tuple[TextEncoderSpec, ...]
    pooled_from: int                           # index of the encoder whose pooled output is used
    fixed_heads: int | None                    # SD1: 8 heads everywhere; else head dim 64
    sdxl_conditioning: bool = False
    extra: dict = field(default_factory=dict)


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in sd.items() if k.startswith(prefix)}


# ---------------------------------- UNet -------------------------------------------------------

def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def unet_config_from_shapes(shapes: dict[str, tuple], family: FamilySpec) -> dict:
    """diffusers UNet2DConditionModel config for an LDM UNet (keys without `model.diffusion_model.`)."""
    keys = list(shapes)
    try:
        mc, in_ch = shapes["input_blocks.0.0.weight"][:2]
        out_ch = shapes["out.2.weight"][0]
    except KeyError as e:
        raise ModelError(f"UNet key {e} missing", where="unet config", fix="is this a complete checkpoint?") from e
    n_in = _count(keys, r"input_blocks\.(\d+)\.")
    levels = sum(1 for i in range(n_in) if f"input_blocks.{i}.0.op.weight" in shapes) + 1
    nrb = (n_in - 1 - (levels - 1)) // levels
    channels, depths = [], []
    for lvl in range(levels):
        idx = 1 + lvl * (nrb + 1)
        channels.append(shapes[f"input_blocks.{idx}.0.out_layers.3.weight"][0])
        depths.append(_count(keys, rf"input_blocks\.{idx}\.1\.transformer_blocks\.(\d+)\."))
    ctx = next(v[1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight"))
    linear = len(next(v for k, v in shapes.items() if k.endswith("proj_in.weight"))) == 2
    heads = [family.fixed_heads or max(1, c // 64) for c in channels]
    mid_depth = _count(keys, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    cfg = {
        "sample_size": 64, "in_channels": in_ch, "out_channels": out_ch, "center_input_sample": False,
        "flip_sin_to_cos": True, "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depths],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depths)],
        "only_cross_attention": False, "block_out_channels": channels, "layers_per_block": nrb,
        "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32,
        "norm_eps": 1e-5, "cross_attention_dim": ctx, "attention_head_dim": heads,
        "use_linear_projection": linear, "upcast_attention": False,
        # diffusers sizes the mid block with the last level's depth; SDXL-like files agree
        "transformer_layers_per_block": [d or 1 for d in depths[:-1]] + [mid_depth or depths[-1] or 1],
    }
    if "label_emb.0.0.weight" in shapes and family.extra.get("unclip"):     # SD2.1 unCLIP: added to the time embedding
        cfg.update(class_embed_type="projection", projection_class_embeddings_input_dim=shapes["label_emb.0.0.weight"][1])
    elif "label_emb.0.0.weight" in shapes:
        cfg.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                   projection_class_embeddings_input_dim=shapes["label_emb.0.0.weight"][1])
    return cfg


def convert_unet(ldm_sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """LDM UNet keys (no prefix) -> diffusers UNet2DConditionModel keys."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return convert_ldm_unet_checkpoint({"model.diffusion_model." + k: v for k, v in ldm_sd.items()}, config)


def unet_module_map(shapes: dict[str, tuple], config: dict) -> dict[str, str]:
    """LDM module path -> diffusers module path (for kohya LoRAs named in the LDM layout).

    Runs the real converter on placeholder scalars, so the map is exactly what loading does."""
    probe = {k: torch.tensor([float(i)]) for i, k in enumerate(shapes)}
    names = list(shapes)
    converted = convert_unet(probe, config)
    out: dict[str, str] = {}
    for dk, t in converted.items():
        lk = names[int(t.reshape(-1)[0].item())]
        for suffix in (".weight", ".bias"):
            if lk.endswith(suffix) and dk.endswith(suffix):
                out[lk[: -len(suffix)]] = dk[: -len(suffix)]
    return out


# ---------------------------------- VAE --------------------------------------------------------

def vae_config_from_shapes(shapes: dict[str, tuple]) -> dict:
    """diffusers AutoencoderKL config for LDM VAE keys (no prefix)."""
    keys = list(shapes)
    levels = _count(keys, r"encoder\.down\.(\d+)\.")
    nrb = _count(keys, r"encoder\.down\.0\.block\.(\d+)\.")
    channels = [shapes[f"encoder.down.{lvl}.block.0.conv1.weight"][0] for lvl in range(levels)]
    z2 = shapes["encoder.conv_out.weight"][0]
    return {
        "in_channels": shapes["encoder.conv_in.weight"][1], "out_channels": shapes["decoder.conv_out.weight"][0],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": channels, "layers_per_block": nrb, "act_fn": "silu",
        "latent_channels": z2 // 2, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215,
    }


def convert_vae(ldm_sd: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(dict(ldm_sd), config)


# ---------------------------------- text encoders ---------------------------------------------

def open_clip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower keys (no prefix) -> our CLIP text model keys (HF CLIPTextModel names)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == "token_embedding.weight":
            out["embeddings.token_embedding.weight"] = v
        elif k == "positional_embedding":
            out["embeddings.position_embedding.weight"] = v
        elif k.startswith("ln_final."):
            out["final_layer_norm." + k.split(".", 1)[1]] = v
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()  # OpenCLIP: x @ P; Linear: x @ W.T
        elif k.startswith("transformer.resblocks."):
            _convert_resblock(k, v, out)
    return out


_RESBLOCK_NAMES = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "attn.out_proj": "self_attn.out_proj"}


def _convert_resblock(key: str, value: torch.Tensor, out: dict) -> None:
    idx, rest = key[len("transformer.resblocks."):].split(".", 1)
    base = f"encoder.layers.{idx}."
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = "weight" if rest.endswith("weight") else "bias"
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
            out[f"{base}self_attn.{name}.{kind}"] = part.contiguous()
        return
    module, kind = rest.rsplit(".", 1)
    if module not in _RESBLOCK_NAMES:
        return  # e.g. attention masks stored as buffers
    out[f"{base}{_RESBLOCK_NAMES[module]}.{kind}"] = value


def text_encoder_state_dict(sd: dict[str, torch.Tensor], spec: TextEncoderSpec) -> dict[str, torch.Tensor]:
    sub = strip_prefix(sd, spec.prefix)
    if not sub:
        raise ModelError(f"text encoder {spec.name} not found (no keys under {spec.prefix!r})",
                         where="checkpoint", fix="use a checkpoint that includes its text encoder")
    if spec.layout == "open_clip":
        return open_clip_to_hf(sub)
    out = {k[len("text_model."):] if k.startswith("text_model.") else k: v for k, v in sub.items()}
    out.pop("embeddings.position_ids", None)  # a buffer of arange(77) in HF files; positions are implicit
    return out
