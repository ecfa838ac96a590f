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
