"""Random-weight diffusion-transformer files for tests and benchmarks (`diffmesh make-test-model`).

size "reference": the shapes, values and bytes of `shared/reference/make_dit_random.py` (same
key-seeded generators, same init kinds, same metadata), so a fresh clone can regenerate the
reference weights without the script. size "tiny": the same key layout with small widths and
one block of each kind, so every loader path runs in well under a second.

Init kinds (those of make_dit_random.py): "w"/"b" U(+-1/sqrt(fan_in)), "norm_w" 1 + N(0, 0.05),
"norm_b" N(0, 0.02).
"""

from __future__ import annotations

import os

import torch

from diffmesh.models import testspecs as ts

# Tiny text-encoder widths the tiny Flux reads: CLIP-L pooled width (testmodels.TINY_CLIP_L) and T5 width.
TINY_FLUX = dict(hidden=256, heads=2, mlp_ratio=4.0, in_channels=16, patch=2, context_in=64, vec_in=32,
                 depth=1, depth_single=1, guidance=True)
REFERENCE_FLUX = dict(hidden=3072, heads=24, mlp_ratio=4.0, in_channels=16, patch=2, context_in=4096, vec_in=768,
                      depth=1, depth_single=1, guidance=True)
TINY_FLUX_VAE = dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)
REFERENCE_FLUX_VAE = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2)


def flux_spec(s: ts.Spec, c: dict, prefix: str = "") -> ts.Spec:
    """Flux.1 in the BFL layout; `guidance` False gives schnell (no guidance_in)."""
    h, p = c["hidden"], prefix
    hd = h // c["heads"]
    mlp = int(h * c["mlp_ratio"])
    pin = c["in_channels"] * c["patch"] ** 2

    def scale(key, n):
        s.items[p + key] = ((n,), "norm_w", None)

    s.linear(p + "img_in", h, pin)
    embedders = [("time_in", 256), ("vector_in", c["vec_in"])] + ([("guidance_in", 256)] if c["guidance"] else [])
    for emb, n_in in embedders:
        s.linear(f"{p}{emb}.in_layer", h, n_in)
        s.linear(f"{p}{emb}.out_layer", h, h)
    s.linear(p + "txt_in", h, c["context_in"])
    for i in range(c["depth"]):
        b = f"{p}double_blocks.{i}"
        for stream in ("img", "txt"):
            s.linear(f"{b}.{stream}_mod.lin", 6 * h, h)
            s.linear(f"{b}.{stream}_attn.qkv", 3 * h, h)
            scale(f"double_blocks.{i}.{stream}_attn.norm.query_norm.scale", hd)
            scale(f"double_blocks.{i}.{stream}_attn.norm.key_norm.scale", hd)
            s.linear(f"{b}.{stream}_attn.proj", h, h)
            s.linear(f"{b}.{stream}_mlp.0", mlp, h)
            s.linear(f"{b}.{stream}_mlp.2", h, mlp)
    for i in range(c["depth_single"]):
        b = f"{p}single_blocks.{i}"
        s.linear(b + ".linear1", 3 * h + mlp, h)
        s.linear(b + ".linear2", h, h + mlp)
        scale(f"single_blocks.{i}.norm.query_norm.scale", hd)
        scale(f"single_blocks.{i}.norm.key_norm.scale", hd)
        s.linear(b + ".modulation.lin", 3 * h, h)
    s.linear(p + "final_layer.linear", pin, h)
    s.linear(p + "final_layer.adaLN_modulation.1", 2 * h, h)
    return s


def flux_vae_spec(s: ts.Spec, c: dict, prefix: str = "") -> ts.Spec:
    """The Flux "ae": the LDM autoencoder with 16 latent channels and no quant convs."""
    ts.vae_spec(s, prefix, z_channels=16, embed_dim=16, **c)
    for name in ("quant_conv", "post_quant_conv"):
        for suffix in (".weight", ".bias"):
            s.items.pop(prefix + name + suffix)
    return s


FILES = {
    # name: (builder(size) -> Spec, make_dit_random.py family and part for the reference metadata)
    "flux": (lambda size: flux_spec(ts.Spec(), REFERENCE_FLUX if size == "reference" else TINY_FLUX),
             ("flux", "model")),
    "flux-schnell": (lambda size: flux_spec(ts.Spec(), dict(REFERENCE_FLUX if size == "reference" else TINY_FLUX,
                                                          guidance=False)), ("flux", "model")),
    "flux-vae": (lambda size: flux_vae_spec(ts.Spec(), REFERENCE_FLUX_VAE if size == "reference" else TINY_FLUX_VAE),
                 ("flux", "vae")),
}


def make_dit_file(name: str, size: str, out: str | os.PathLike, seed: int = 0) -> str:
    """Write one DiT test file; size "reference" gives make_dit_random.py's bytes (fp32, seed 0)."""
    build, (family, part) = FILES[name]
    sd = ts.materialize(build(size), seed, torch.float32)
    if size == "reference":
        meta = {"format": "pt", "generator": "make_dit_random.py", "family": family, "part": part,
                "seed": str(seed), "dtype": "fp32", "note": "random weights, NOT a trained model"}
    else:
        meta = {"format": "pt", "generator": "diffmesh.models.dit.testfiles", "family": name, "size": size,
                "seed": str(seed), "note": "random weights, NOT a trained model"}
    ts.save_safetensors_deterministic(sd, str(out), meta)
    return str(out)


# ---------------------------------------------------------------- LoRAs and fp8 variants of the tiny Flux

def _pair(sd: dict, name: str, down_key: str, up_key: str, rows: int, cols: int, rank: int, seed: int,
          alpha: float | None = None, up: torch.Tensor | None = None) -> None:
    g = torch.Generator().manual_seed(ts.key_seed(seed, name))
    sd[f"{name}.{down_key}"] = torch.randn((rank, cols), generator=g) * 0.5
    sd[f"{name}.{up_key}"] = torch.randn((rows, rank), generator=g) * 0.5 if up is None else up
    if alpha is not None:
        sd[f"{name}.alpha"] = torch.tensor(float(alpha))


def flux_loras(rank: int = 4) -> dict[str, dict[str, torch.Tensor]]:
    """Tiny-Flux LoRAs in the three key formats: kohya (BFL names), diffusers/PEFT (diffusers names of
    the split layers), ComfyUI (`diffusion_model.` + BFL names)."""
    h, mlp = TINY_FLUX["hidden"], int(TINY_FLUX["hidden"] * TINY_FLUX["mlp_ratio"])
    kohya: dict = {}
    _pair(kohya, "lora_unet_double_blocks_0_img_attn_qkv", "lora_down.weight", "lora_up.weight", 3 * h, h, rank, 31,
          alpha=rank / 2)
    _pair(kohya, "lora_unet_single_blocks_0_linear1", "lora_down.weight", "lora_up.weight", 3 * h + mlp, h, rank, 31,
          alpha=rank)
    _pair(kohya, "lora_unet_double_blocks_0_txt_mlp_0", "lora_down.weight", "lora_up.weight", mlp, h, rank, 31)
    peft: dict = {}
    for name, rows in (("transformer.transformer_blocks.0.attn.to_k", h), ("transformer.transformer_blocks.0.attn.add_v_proj", h),
                       ("transformer.single_transformer_blocks.0.proj_mlp", mlp),
                       ("transformer.single_transformer_blocks.0.attn.to_q", h)):
        _pair(peft, name, "lora_A.weight", "lora_B.weight", rows, h, rank, 32)
    comfy: dict = {}
    _pair(comfy, "diffusion_model.double_blocks.0.img_attn.proj", "lora_down.weight", "lora_up.weight", h, h, rank, 33)
    _pair(comfy, "diffusion_model.final_layer.linear", "lora_down.weight", "lora_up.weight",
          TINY_FLUX["in_channels"] * 4, h, rank, 33)
    return {"kohya": kohya, "peft": peft, "comfy": comfy}


def scaled_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A "scaled fp8" copy as ComfyUI's converters write it: each 2-D weight stored in float8_e4m3fn
    divided by a per-tensor `scale_weight` (absmax / 448), a `scaled_fp8` marker; the rest unchanged."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, t in sd.items():
        if key.endswith(".weight") and t.ndim == 2:
            scale = t.abs().max().float() / 448.0
            out[key] = (t.float() / scale).to(torch.float8_e4m3fn)
            out[key[:-len(".weight")] + ".scale_weight"] = scale.reshape(())
        else:
            out[key] = t
    return out


def write_flux_test_files(models: str | os.PathLike) -> dict:
    """Tiny Flux files in a ComfyUI `models/` tree: dev, schnell, an all-in-one checkpoint prefix copy,
    a scaled-fp8 dev, the "ae" VAE, and LoRAs in the three formats. Returns {key: path}."""
    from pathlib import Path

    from safetensors.torch import save_file

    models = Path(models)
    dm, va, lo = models / "diffusion_models", models / "vae", models / "loras"
    for d in (dm, va, lo):
        d.mkdir(parents=True, exist_ok=True)
    out = {"flux_dev": make_dit_file("flux", "tiny", dm / "tiny-flux-dev.safetensors"),
           "flux_schnell": make_dit_file("flux-schnell", "tiny", dm / "tiny-flux-schnell.safetensors"),
           "flux_vae": make_dit_file("flux-vae", "tiny", va / "tiny-flux-ae.safetensors")}
    dev = ts.materialize(flux_spec(ts.Spec(), TINY_FLUX), 0, torch.float32)
    save_file(scaled_fp8(dev), str(dm / "tiny-flux-dev-scaled-fp8.safetensors"))
    out["flux_scaled_fp8"] = str(dm / "tiny-flux-dev-scaled-fp8.safetensors")
    for fmt, sd in flux_loras().items():
        path = lo / f"tiny-flux-{fmt}.safetensors"
        ts.save_safetensors_deterministic(sd, str(path), {"note": "random weights, NOT a trained model"})
        out[f"flux_lora_{fmt}"] = str(path)
    return out
