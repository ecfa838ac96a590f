"""Random-weight Z-Image and Qwen-Image transformers and Wan 2.1 VAEs, in the layouts their loaders read.

Two sizes per family:
  - "reference": the shapes of `reference/make_dit_random.py` (full width, 1 layer/block; the full
    Wan 2.1 VAE); `--size full` is the same. Same init and per-key seeds as that script, so the file has
    the same tensors (`zimage` 3.6 GB, `qwenimage` 1.5 GB, `wan21vae` 0.5 GB; written one tensor at a
    time).
  - "tiny": width 64 (2 heads of 32), caption/text width 64 (the hidden size of the tiny Qwen3-4B and
    Qwen2.5-VL text encoders of `models.text.testfiles`, so tiny workflows run end to end), the Wan
    VAE at base width 8 — every key
    name and structural marker of the real files (Z-Image's 2 noise + 2 context refiners, pad tokens,
    `adaLN_modulation.0`; Qwen-Image's two streams; the VAE's 4 levels and causal time convs), so
    detection, loading, 5-D latents and sampling run through the real code in well under a second.

Init (as the reference script): Linear/conv U(+-1/sqrt(fan_in)); norm weights and scales
1 + N(0, 0.05); Z-Image pad tokens N(0, 1). Every tensor comes from its own generator seeded from
crc32(key) and the seed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from diffmesh.errors import ModelError
from diffmesh.models.testspecs import key_seed

ZIMAGE = {"reference": dict(dim=3840, heads=30, cap=2560, t_hidden=1024, layers=1),
          "tiny": dict(dim=64, heads=2, cap=64, t_hidden=64, layers=1)}
QWENIMAGE = {"reference": dict(dim=3072, head_dim=128, joint=3584, layers=1),
             "tiny": dict(dim=64, head_dim=32, joint=64, layers=1)}
WAN_VAE = {"reference": dict(dim=96), "tiny": dict(dim=8)}
# Wan 2.1 transformer: "reference" is make_dit_random.py's (dim 256 = 2 heads of 128); "tiny" keeps one
# head of 128 (ComfyUI's heads = dim / 128) and reads the tiny UMT5's width 64; 1.3B/14B for shape tests
WAN21 = {"reference": dict(dim=256, ffn=512, layers=2, in_dim=16, text_dim=4096, i2v=False),
         "tiny": dict(dim=128, ffn=256, layers=2, in_dim=16, text_dim=64, i2v=False),
         "tiny-i2v": dict(dim=128, ffn=256, layers=2, in_dim=36, text_dim=64, i2v=True),
         "1.3b": dict(dim=1536, ffn=8960, layers=30, in_dim=16, text_dim=4096, i2v=False),
         "1.3b-2layers": dict(dim=1536, ffn=8960, layers=2, in_dim=16, text_dim=4096, i2v=False),     # bench/wan.py
         "14b": dict(dim=5120, ffn=13824, layers=40, in_dim=16, text_dim=4096, i2v=False),
         "14b-i2v": dict(dim=5120, ffn=13824, layers=40, in_dim=36, text_dim=4096, i2v=True),
         # Wan 2.2 14B I2V experts: start-image channels (in_dim 36) but no CLIP-vision rows (no img_emb)
         "tiny-i2v-22": dict(dim=128, ffn=256, layers=2, in_dim=36, text_dim=64, i2v=False),
         # Wan 2.2 TI2V: the same layout on the 48-channel Wan 2.2 latent (family wan22)
         "tiny-ti2v": dict(dim=128, ffn=256, layers=2, in_dim=48, text_dim=64, i2v=False, out_dim=48),
         "5b": dict(dim=3072, ffn=14336, layers=30, in_dim=48, text_dim=4096, i2v=False, out_dim=48)}
# Wan 2.2 VAE: "reference" has ComfyUI's widths (160, decoder 256); "tiny" keeps every key at small widths
WAN22_VAE = {"reference": dict(dim=160, dec_dim=256), "tiny": dict(dim=8, dec_dim=12)}
FAMILIES = ("zimage", "qwenimage", "wan21vae", "wan21", "wan22vae")
# file names the reference runs (and ComfyUI's folders) use
REFERENCE_NAMES = {"zimage": "zimage-random.safetensors", "qwenimage": "qwenimage-1block-random.safetensors",
                   "wan21vae": "wan21-vae-random.safetensors", "wan21": "wan21-t2v-tiny-random.safetensors"}


class _Spec:
    """key -> (shape, kind, arg): kind "u" uniform +-1/sqrt(arg), "one" 1+N(0,0.05), "n" N(0, arg)."""

    def __init__(self):
        self.items: dict[str, tuple] = {}

    def linear(self, name, n_out, n_in, bias=True):
        self.items[name + ".weight"] = ((n_out, n_in), "u", n_in)
        if bias:
            self.items[name + ".bias"] = ((n_out,), "u", n_in)

    def conv(self, name, n_out, n_in, kernel):
        fan_in = n_in * math.prod(kernel)
        self.items[name + ".weight"] = ((n_out, n_in) + tuple(kernel), "u", fan_in)
        self.items[name + ".bias"] = ((n_out,), "u", fan_in)

    def scale(self, key, shape):
        self.items[key] = (tuple(shape), "one", None)


def zimage_spec(size: str) -> _Spec:
    c = ZIMAGE[size]
    s, d = _Spec(), c["dim"]
    hd = d // c["heads"]
    ffn = 256 * ((int(8.0 / 3.0 * d) + 255) // 256)
    adaln = min(d, 256)

    def block(name, modulation):
        s.linear(name + ".attention.qkv", 3 * d, d, bias=False)
        s.linear(name + ".attention.out", d, d, bias=False)
        s.scale(name + ".attention.q_norm.weight", (hd,))
        s.scale(name + ".attention.k_norm.weight", (hd,))
        s.linear(name + ".feed_forward.w1", ffn, d, bias=False)
        s.linear(name + ".feed_forward.w2", d, ffn, bias=False)
        s.linear(name + ".feed_forward.w3", ffn, d, bias=False)
        for n in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            s.scale(f"{name}.{n}.weight", (d,))
        if modulation:
            s.linear(name + ".adaLN_modulation.0", 4 * d, adaln)

    s.linear("x_embedder", d, 64)
    for i in range(2):
        block(f"noise_refiner.{i}", True)
        block(f"context_refiner.{i}", False)
    s.linear("t_embedder.mlp.0", c["t_hidden"], 256)
    s.linear("t_embedder.mlp.2", adaln, c["t_hidden"])
    s.scale("cap_embedder.0.weight", (c["cap"],))
    s.linear("cap_embedder.1", d, c["cap"])
    for i in range(c["layers"]):
        block(f"layers.{i}", True)
    s.linear("final_layer.linear", 64, d)
    s.linear("final_layer.adaLN_modulation.1", d, adaln)
    s.items["x_pad_token"] = ((1, d), "n", 1.0)
    s.items["cap_pad_token"] = ((1, d), "n", 1.0)
    return s


def qwenimage_spec(size: str) -> _Spec:
    c = QWENIMAGE[size]
    s, h, hd = _Spec(), c["dim"], c["head_dim"]
    s.linear("img_in", h, 64)
    s.scale("txt_norm.weight", (c["joint"],))
    s.linear("txt_in", h, c["joint"])
    s.linear("time_text_embed.timestep_embedder.linear_1", h, 256)
    s.linear("time_text_embed.timestep_embedder.linear_2", h, h)
    for i in range(c["layers"]):
        b = f"transformer_blocks.{i}"
        s.linear(b + ".img_mod.1", 6 * h, h)
        s.linear(b + ".txt_mod.1", 6 * h, h)
        for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0", "to_add_out"):
            s.linear(f"{b}.attn.{p}", h, h)
        for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            s.scale(f"{b}.attn.{n}.weight", (hd,))
        for stream in ("img_mlp", "txt_mlp"):
            s.linear(f"{b}.{stream}.net.0.proj", 4 * h, h)
            s.linear(f"{b}.{stream}.net.2", h, 4 * h)
    s.linear("norm_out.linear", 2 * h, h)
    s.linear("proj_out", 64, h)
    return s


def wan_vae_spec(size: str) -> _Spec:
    """The causal 3-D conv VAE of Wan 2.1 (levels 1, 2, 4, 4; time halved by the last two stages)."""
    s, dim, z, k3 = _Spec(), WAN_VAE[size]["dim"], 16, (3, 3, 3)
    mult, temporal_down = (1, 2, 4, 4), (False, True, True)

    def resblock(name, cin, cout):
        s.scale(name + ".residual.0.gamma", (cin, 1, 1, 1))
        s.conv(name + ".residual.2", cout, cin, k3)
        s.scale(name + ".residual.3.gamma", (cout, 1, 1, 1))
        s.conv(name + ".residual.6", cout, cout, k3)
        if cin != cout:
            s.conv(name + ".shortcut", cout, cin, (1, 1, 1))

    def attn(name, ch):
        s.scale(name + ".norm.gamma", (ch, 1, 1))
        s.conv(name + ".to_qkv", 3 * ch, ch, (1, 1))
        s.conv(name + ".proj", ch, ch, (1, 1))

    widths = [dim * m for m in (1,) + mult]
    s.conv("encoder.conv1", widths[0], 3, k3)
    idx = 0
    for lvl in range(4):
        cin, cout = widths[lvl], widths[lvl + 1]
        for _ in range(2):
            resblock(f"encoder.downsamples.{idx}", cin, cout)
            cin, idx = cout, idx + 1
        if lvl < 3:
            s.conv(f"encoder.downsamples.{idx}.resample.1", cout, cout, (3, 3))
            if temporal_down[lvl]:
                s.conv(f"encoder.downsamples.{idx}.time_conv", cout, cout, (3, 1, 1))
            idx += 1
    top = widths[-1]
    resblock("encoder.middle.0", top, top)
    attn("encoder.middle.1", top)
    resblock("encoder.middle.2", top, top)
    s.scale("encoder.head.0.gamma", (top, 1, 1, 1))
    s.conv("encoder.head.2", 2 * z, top, k3)
    s.conv("conv1", 2 * z, 2 * z, (1, 1, 1))
    s.conv("conv2", z, z, (1, 1, 1))

    temporal_up = tuple(reversed(temporal_down))
    widths = [dim * m for m in (mult[-1],) + tuple(reversed(mult))]
    s.conv("decoder.conv1", widths[0], z, k3)
    resblock("decoder.middle.0", widths[0], widths[0])
    attn("decoder.middle.1", widths[0])
    resblock("decoder.middle.2", widths[0], widths[0])
    idx = 0
    for lvl in range(4):
        cin, cout = widths[lvl], widths[lvl + 1]
        cin = cin // 2 if lvl > 0 else cin          # every upsampling halves the channels it outputs
        for _ in range(3):
            resblock(f"decoder.upsamples.{idx}", cin, cout)
            cin, idx = cout, idx + 1
        if lvl < 3:
            s.conv(f"decoder.upsamples.{idx}.resample.1", cout // 2, cout, (3, 3))
            if temporal_up[lvl]:
                s.conv(f"decoder.upsamples.{idx}.time_conv", 2 * cout, cout, (3, 1, 1))
            idx += 1
    s.scale("decoder.head.0.gamma", (widths[-1], 1, 1, 1))
    s.conv("decoder.head.2", 3, widths[-1], k3)
    return s


def wan21_spec(size: str) -> _Spec:
    """Wan 2.1 text-to-video (image-to-video with `i2v`: k_img/v_img/norm_k_img and the CLIP-vision MLP)."""
    c = WAN21[size]
    s, d = _Spec(), c["dim"]
    s.conv("patch_embedding", d, c["in_dim"], (1, 2, 2))
    s.linear("text_embedding.0", d, c["text_dim"])
    s.linear("text_embedding.2", d, d)
    s.linear("time_embedding.0", d, 256)
    s.linear("time_embedding.2", d, d)
    s.linear("time_projection.1", 6 * d, d)
    for i in range(c["layers"]):
        b = f"blocks.{i}"
        for att in ("self_attn", "cross_attn"):
            for p in ("q", "k", "v", "o"):
                s.linear(f"{b}.{att}.{p}", d, d)
            s.scale(f"{b}.{att}.norm_q.weight", (d,))
            s.scale(f"{b}.{att}.norm_k.weight", (d,))
        if c["i2v"]:
            s.linear(f"{b}.cross_attn.k_img", d, d)
            s.linear(f"{b}.cross_attn.v_img", d, d)
            s.scale(f"{b}.cross_attn.norm_k_img.weight", (d,))
        s.scale(b + ".norm3.weight", (d,))
        s.items[b + ".norm3.bias"] = ((d,), "n", 0.02)          # the reference script's "nb": N(0, 0.02)
        s.linear(b + ".ffn.0", c["ffn"], d)
        s.linear(b + ".ffn.2", d, c["ffn"])
        s.items[b + ".modulation"] = ((1, 6, d), "n", d ** -0.5)
    s.linear("head.head", 4 * c.get("out_dim", 16), d)
    s.items["head.modulation"] = ((1, 2, d), "n", d ** -0.5)
    if c["i2v"]:
        for n in ("img_emb.proj.0", "img_emb.proj.4"):
            width = 1280 if n.endswith(".0") else d
            s.scale(n + ".weight", (width,))
            s.items[n + ".bias"] = ((width,), "n", 0.02)
        s.linear("img_emb.proj.1", 1280, 1280)
        s.linear("img_emb.proj.3", d, 1280)
    return s


def wan22_vae_spec(size: str) -> _Spec:
    """The Wan 2.2 VAE in the original layout: the shapes of diffusers' AutoencoderKLWan(is_residual)
    under the original key names (`models.vae_wan22.original_key`); z_dim 48."""
    from diffusers import AutoencoderKLWan

    from diffmesh.models import vae_wan22

    c = WAN22_VAE[size]
    cfg = {**vae_wan22.config_for(c["dim"], c["dec_dim"], 48)}
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in AutoencoderKLWan(**cfg).state_dict().items()}
    s = _Spec()
    for key, shape in shapes.items():
        name = vae_wan22.original_key(key)
        if name.endswith(".gamma"):
            s.scale(name, shape)
        else:                           # conv weight, or its bias: U(+-1/sqrt(fan_in)) of the weight
            weight = shapes[key[:-len("bias")] + "weight"] if key.endswith(".bias") else shape
            s.items[name] = (shape, "u", math.prod(weight[1:]))
    return s


SPECS = {"zimage": zimage_spec, "qwenimage": qwenimage_spec, "wan21vae": wan_vae_spec, "wan21": wan21_spec,
         "wan22vae": wan22_vae_spec}


def _tensor(key: str, shape: tuple, kind: str, arg, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(key_seed(seed, key))
    t = torch.empty(shape, dtype=torch.float32)
    if kind == "u":
        bound = 1.0 / math.sqrt(arg)
        return t.uniform_(-bound, bound, generator=g)
    if kind == "one":
        return t.normal_(0.0, 0.05, generator=g).add_(1.0)
    return t.normal_(0.0, float(arg), generator=g)


def state_dict(family: str, size: str = "tiny", seed: int = 0) -> dict[str, torch.Tensor]:
    """All tensors of a test model in memory (use for tiny models; `write` streams big ones)."""
    spec = _spec(family, size)
    return {k: _tensor(k, *v, seed) for k, v in spec.items.items()}


def _spec(family: str, size: str) -> _Spec:
    size = "reference" if size == "full" else size
    sizes = tuple(WAN21) if family == "wan21" else ("tiny", "reference")
    if family not in SPECS or size not in sizes:
        raise ModelError(f"no test model for family {family!r} size {size!r}", where="make-test-model",
                         fix=f"family one of {list(SPECS)}, size tiny or reference (wan21 also: {', '.join(WAN21)})")
    return SPECS[family](size)


def write(family: str, size: str, out_path: str | os.PathLike, seed: int = 0) -> str:
    """Write one file, one tensor in memory at a time: sorted keys, sorted metadata (reproducible bytes)."""
    spec = _spec(family, size)
    part = "vae" if family in ("wan21vae", "wan22vae") else "model"
    if size in ("reference", "full"):           # the reference script's metadata too: the same bytes
        meta = {"format": "pt", "generator": "make_dit_random.py", "family": "wan21" if part == "vae" else family,
                "part": part, "seed": str(seed), "dtype": "fp32", "note": "random weights, NOT a trained model"}
    else:
        meta = {"format": "pt", "generator": "diffmesh.models.testmodels_dit", "family": family, "part": part,
                "size": size, "seed": str(seed), "note": "random weights, NOT a trained model"}
    header: dict = {"__metadata__": dict(sorted(meta.items()))}
    offset = 0
    keys = sorted(spec.items)
    for k in keys:
        n = math.prod(spec.items[k][0]) * 4
        header[k] = {"dtype": "F32", "shape": list(spec.items[k][0]), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    out = str(out_path)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out + ".tmp", "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for k in keys:
            f.write(_tensor(k, *spec.items[k], seed).reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(out + ".tmp", out)
    return out


def write_tiny_dit_models(models_dir: str | os.PathLike) -> dict[str, str]:
    """Tiny Z-Image and Qwen-Image in `<models_dir>/diffusion_models/`, the tiny Wan VAE in `vae/`."""
    models = Path(models_dir)
    return {
        "zimage": write("zimage", "tiny", models / "diffusion_models" / "tiny-zimage.safetensors"),
        "qwenimage": write("qwenimage", "tiny", models / "diffusion_models" / "tiny-qwenimage.safetensors"),
        "wan21vae": write("wan21vae", "tiny", models / "vae" / "tiny-wan21-vae.safetensors"),
    }
