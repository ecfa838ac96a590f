"""Random-weight CLIP-vision encoders and style models for tests, in ComfyUI's on-disk layouts.

Tiny CLIP-vision files keep the depth that tells their kind in ComfyUI (48 layers for ViT-bigG, 32
for ViT-H, 24 for ViT-L) at width 32 (16 heads of 2), so detection runs through the real markers;
the tiny SigLIP (no class token, 2 layers, 56 px) is read by its shapes. Layouts: "transformers"
(`vision_model.*`, as ComfyUI's clip_vision files) or "open_clip" (`visual.*`; `embedder.model.visual.*`
inside an unCLIP checkpoint). Every tensor comes from its own generator seeded from the key and seed.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffmesh.errors import ModelError
from diffmesh.models.testspecs import key_seed

TINY_DEPTH = {"vit_g": 48, "vit_h": 32, "vit_l": 24, "siglip": 2}
TINY = dict(width=32, inner=64, projection=16, patch=14)


def _tensor(key: str, shape: tuple, kind: str, seed: int) -> torch.Tensor:
    """kind "u": U(+-1/sqrt(fan_in)) (fan_in = last dim), "one": 1 + N(0, 0.05), "n": N(0, 0.02)."""
    g = torch.Generator().manual_seed(key_seed(seed, key))
    if kind == "one":
        return 1.0 + 0.05 * torch.randn(shape, generator=g)
    if kind == "n":
        return 0.02 * torch.randn(shape, generator=g)
    bound = 1.0 / (shape[-1] if len(shape) == 2 else max(1, int(torch.tensor(shape[1:]).prod()))) ** 0.5
    return (torch.rand(shape, generator=g) * 2 - 1) * bound


def _vision_spec(kind: str, image_size: int) -> dict[str, tuple]:
    """transformers names -> (shape, init kind) of a tiny encoder of `kind`."""
    w, inner, patch = TINY["width"], TINY["inner"], TINY["patch"]
    siglip = kind == "siglip"
    grid = (image_size // patch) ** 2
    spec: dict[str, tuple] = {
        "vision_model.embeddings.patch_embedding.weight": ((w, 3, patch, patch), "u"),
        "vision_model.embeddings.position_embedding.weight": ((grid + (0 if siglip else 1), w), "n"),
        "vision_model.post_layernorm.weight": ((w,), "one"), "vision_model.post_layernorm.bias": ((w,), "n")}
    if siglip:
        spec["vision_model.embeddings.patch_embedding.bias"] = ((w,), "n")
    else:
        spec.update({"vision_model.embeddings.class_embedding": ((w,), "n"),
                     "vision_model.pre_layrnorm.weight": ((w,), "one"), "vision_model.pre_layrnorm.bias": ((w,), "n"),
                     "visual_projection.weight": ((TINY["projection"], w), "u")})
    for i in range(TINY_DEPTH[kind]):
        base = f"vision_model.encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            spec[f"{base}self_attn.{name}.weight"] = ((w, w), "u")
            spec[f"{base}self_attn.{name}.bias"] = ((w,), "n")
        for name in ("layer_norm1", "layer_norm2"):
            spec[f"{base}{name}.weight"] = ((w,), "one")
            spec[f"{base}{name}.bias"] = ((w,), "n")
        spec.update({f"{base}mlp.fc1.weight": ((inner, w), "u"), f"{base}mlp.fc1.bias": ((inner,), "n"),
                     f"{base}mlp.fc2.weight": ((w, inner), "u"), f"{base}mlp.fc2.bias": ((w,), "n")})
    return spec


def clip_vision_state_dict(kind: str = "vit_h", seed: int = 0, image_size: int | None = None,
                           projection: int | None = None) -> dict[str, torch.Tensor]:
    """A tiny encoder in the transformers layout ComfyUI's clip_vision files use (`projection`: the
    image-embedding width, 16 unless given)."""
    if kind not in TINY_DEPTH:
        raise ModelError(f"no tiny CLIP-vision model of kind {kind!r}", where="testmodels_vision",
                         fix=f"use one of {sorted(TINY_DEPTH)}")
    size = image_size or (56 if kind == "siglip" else 224)
    sd = {k: _tensor(k, shape, init, seed) for k, (shape, init) in _vision_spec(kind, size).items()}
    if projection is not None and kind != "siglip":
        sd["visual_projection.weight"] = _tensor("visual_projection.weight", (projection, TINY["width"]), "u", seed)
    return sd


def to_open_clip(sd: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """The same encoder in open_clip names (the inverse of ComfyUI's conversion)."""
    renames = {"vision_model.embeddings.class_embedding": "class_embedding",
               "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
               "vision_model.embeddings.position_embedding.weight": "positional_embedding",
               "vision_model.pre_layrnorm.weight": "ln_pre.weight", "vision_model.pre_layrnorm.bias": "ln_pre.bias",
               "vision_model.post_layernorm.weight": "ln_post.weight", "vision_model.post_layernorm.bias": "ln_post.bias"}
    blocks = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in renames:
            out[prefix + renames[key]] = value
        elif key == "visual_projection.weight":
            out[prefix + "proj"] = value.transpose(0, 1).contiguous()
        elif key.startswith("vision_model.encoder.layers."):
            index, rest = key[len("vision_model.encoder.layers."):].split(".", 1)
            part, suffix = rest.rsplit(".", 1)
            base = f"{prefix}transformer.resblocks.{index}."
            if part in blocks:
                out[f"{base}{blocks[part]}.{suffix}"] = value
            elif part == "self_attn.q_proj":
                q, k, v = (sd[key.replace("q_proj", n)] for n in ("q_proj", "k_proj", "v_proj"))
                out[f"{base}attn.in_proj_{suffix}"] = torch.cat([q, k, v], dim=0)
    return out


def redux_state_dict(vision_width: int = TINY["width"], text_width: int = 64, seed: int = 3) -> dict[str, torch.Tensor]:
    """A Flux Redux style model: redux_up (3 x text width, vision width), redux_down back to text width."""
    shapes = {"redux_up.weight": ((3 * text_width, vision_width), "u"), "redux_up.bias": ((3 * text_width,), "n"),
              "redux_down.weight": ((text_width, 3 * text_width), "u"), "redux_down.bias": ((text_width,), "n")}
    return {k: _tensor(k, shape, init, seed) for k, (shape, init) in shapes.items()}


def gligen_state_dict(text_width: int = 32, seed: int = 5) -> dict[str, torch.Tensor]:
    """A GLIGEN file for the tiny SD1 UNet: the position net (ComfyUI's 512-wide MLP over pooled text +
    8 Fourier frequencies x 2 x 4 box coordinates) and a gated self-attention fuser for every transformer
    block of the tiny UNet (heads of 64 as ComfyUI sizes them for text that is not 768 wide)."""
    from diffmesh.models.testmodels import checkpoint_state_dict

    position = 8 * 2 * 4
    shapes: dict[str, tuple] = {
        "position_net.linears.0.weight": ((512, text_width + position), "u"), "position_net.linears.0.bias": ((512,), "n"),
        "position_net.linears.2.weight": ((512, 512), "u"), "position_net.linears.2.bias": ((512,), "n"),
        "position_net.linears.4.weight": ((text_width, 512), "u"), "position_net.linears.4.bias": ((text_width,), "n"),
        "position_net.null_positive_feature": ((text_width,), "n"),
        "position_net.null_position_feature": ((position,), "n")}
    unet = checkpoint_state_dict("sd1", "tiny")
    suffix = ".transformer_blocks.0.norm1.weight"
    for key in [k for k in unet if k.endswith(suffix)]:
        dim, inner = unet[key].shape[0], 64 * max(1, unet[key].shape[0] // 64)
        fuser = key[len("model.diffusion_model."):-len("norm1.weight")] + "fuser."
        for name, shape in (("linear.weight", (dim, text_width)), ("linear.bias", (dim,)),
                            ("attn.to_q.weight", (inner, dim)), ("attn.to_k.weight", (inner, dim)),
                            ("attn.to_v.weight", (inner, dim)), ("attn.to_out.0.weight", (dim, inner)),
                            ("attn.to_out.0.bias", (dim,)), ("ff.net.0.proj.weight", (8 * dim, dim)),
                            ("ff.net.0.proj.bias", (8 * dim,)), ("ff.net.2.weight", (dim, 4 * dim)),
                            ("ff.net.2.bias", (dim,)), ("norm1.weight", (dim,)), ("norm1.bias", (dim,)),
                            ("norm2.weight", (dim,)), ("norm2.bias", (dim,))):
            shapes[fuser + name] = (shape, "u" if len(shape) == 2 else "n")
    sd = {k: _tensor(k, shape, init, seed) for k, (shape, init) in shapes.items()}
    for key in [k for k in sd if k.endswith("fuser.linear.weight")]:
        base = key[:-len("linear.weight")]
        sd[base + "alpha_attn"] = torch.tensor(0.5)     # gates open (trained files: learnt; zero at init)
        sd[base + "alpha_dense"] = torch.tensor(0.3)
    return sd


def unclip_checkpoint_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny SD2.1 unCLIP-H checkpoint: the tiny SD2 checkpoint, the UNet's ADM class embedding
    (`label_emb.0.{0,2}`, input 2 x 1024: image embedding + noise-level embedding) and a tiny ViT-H
    (32 layers, projection 1024) under `embedder.model.visual.` in open_clip names."""
    from diffmesh.models.testmodels import checkpoint_state_dict

    sd = checkpoint_state_dict("sd2", "tiny", seed)
    time_dim = sd["model.diffusion_model.time_embed.0.weight"].shape[0]
    for key, shape, init in (("label_emb.0.0.weight", (time_dim, 2048), "u"), ("label_emb.0.0.bias", (time_dim,), "n"),
                             ("label_emb.0.2.weight", (time_dim, time_dim), "u"), ("label_emb.0.2.bias", (time_dim,), "n")):
        sd["model.diffusion_model." + key] = _tensor(key, shape, init, seed)
    vision = clip_vision_state_dict("vit_h", seed, projection=1024)
    sd.update(to_open_clip(vision, "embedder.model.visual."))
    return sd


def save(sd: dict[str, torch.Tensor], path: str | os.PathLike) -> str:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return str(path)


# `diffmesh make-test-model --family NAME --size tiny`: name -> state dict maker
FILES = {"clip_vision_h": lambda seed: clip_vision_state_dict("vit_h", seed),
         "clip_vision_l": lambda seed: clip_vision_state_dict("vit_l", seed),
         "clip_vision_g": lambda seed: clip_vision_state_dict("vit_g", seed),
         "clip_vision_siglip": lambda seed: clip_vision_state_dict("siglip", seed),
         "redux": lambda seed: redux_state_dict(seed=seed), "gligen": lambda seed: gligen_state_dict(seed=seed),
         "sd21unclip": unclip_checkpoint_state_dict}


def write(name: str, size: str, out_path: str | os.PathLike, seed: int = 0) -> str:
    if size != "tiny":
        raise ModelError(f"only tiny {name} test files exist", where="make-test-model", fix="use --size tiny")
    return save(FILES[name](seed), out_path)


def write_tiny_vision_models(models_dir: str | os.PathLike) -> dict[str, str]:
    """clip_vision/{tiny_vit_h, tiny_vit_l, tiny_vit_g, tiny_siglip, tiny_open_clip_h}.safetensors and
    style_models/tiny_redux.safetensors (text width 64: the tiny Flux's context width) and
    gligen/tiny_gligen.safetensors (for the tiny SD1: text width 32) and
    checkpoints/tiny_sd21_unclip_h.safetensors under `models_dir`."""
    root = Path(models_dir)
    out = {f"clip_vision_{kind}": save(clip_vision_state_dict(kind), root / "clip_vision" / f"tiny_{kind}.safetensors")
           for kind in TINY_DEPTH}
    out["clip_vision_open_clip"] = save(to_open_clip(clip_vision_state_dict("vit_h")),
                                        root / "clip_vision" / "tiny_open_clip_h.safetensors")
    out["redux"] = save(redux_state_dict(), root / "style_models" / "tiny_redux.safetensors")
    out["gligen"] = save(gligen_state_dict(), root / "gligen" / "tiny_gligen.safetensors")
    out["unclip"] = save(unclip_checkpoint_state_dict(), root / "checkpoints" / "tiny_sd21_unclip_h.safetensors")
    return out
