"""Key/shape specs of original-layout Stable Diffusion files, and deterministic random tensors.

Used by `diffmesh.models.testmodels` to write random-weight checkpoints that look exactly like
real ones to a loader (same key names, same structure), only smaller. The SD1.5 parts and the
tensor initialisation follow our reference script `reference/make_sd15_random.py`, so the full
SD1.5 writer reproduces its bytes.

Every tensor is drawn from its own generator seeded from crc32("<key>") and the seed, so values
do not depend on the order of keys or on which other tensors exist.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Spec:
    """Ordered key -> (shape, kind, fan_in). kind: w, b, norm_w, norm_b, emb, position_ids."""

    items: dict = field(default_factory=dict)

    def conv(self, name, cout, cin, k, bias=True):
        self.items[name + ".weight"] = ((cout, cin, k, k), "w", cin * k * k)
        if bias:
            self.items[name + ".bias"] = ((cout,), "b", cin * k * k)

    def linear(self, name, cout, cin, bias=True):
        self.items[name + ".weight"] = ((cout, cin), "w", cin)
        if bias:
            self.items[name + ".bias"] = ((cout,), "b", cin)

    def norm(self, name, c):
        self.items[name + ".weight"] = ((c,), "norm_w", None)
        self.items[name + ".bias"] = ((c,), "norm_b", None)

    def emb(self, name, n, d):
        self.items[name + ".weight"] = ((n, d), "emb", None)


# ---------------------------------- UNet (openaimodel layout) --------------------------------

def _transformer(s, name, c, context_dim, depth, linear_proj):
    s.norm(f"{name}.norm", c)  # GroupNorm
    # SD1: 1x1 conv projections; SD2/SDXL: linear (use_linear_in_transformer)
    if linear_proj:
        s.linear(f"{name}.proj_in", c, c)
    else:
        s.conv(f"{name}.proj_in", c, c, 1)
    for d in range(depth):
        tb = f"{name}.transformer_blocks.{d}"
        s.linear(f"{tb}.attn1.to_q", c, c, bias=False)
        s.linear(f"{tb}.attn1.to_k", c, c, bias=False)
        s.linear(f"{tb}.attn1.to_v", c, c, bias=False)
        s.linear(f"{tb}.attn1.to_out.0", c, c)
        s.linear(f"{tb}.ff.net.0.proj", c * 4 * 2, c)  # GEGLU
        s.linear(f"{tb}.ff.net.2", c, c * 4)
        s.linear(f"{tb}.attn2.to_q", c, c, bias=False)
        s.linear(f"{tb}.attn2.to_k", c, context_dim, bias=False)
        s.linear(f"{tb}.attn2.to_v", c, context_dim, bias=False)
        s.linear(f"{tb}.attn2.to_out.0", c, c)
        s.norm(f"{tb}.norm1", c)
        s.norm(f"{tb}.norm2", c)
        s.norm(f"{tb}.norm3", c)
    if linear_proj:
        s.linear(f"{name}.proj_out", c, c)
    else:
        s.conv(f"{name}.proj_out", c, c, 1)


def unet_spec(s, p, model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=2,
              attention_levels=(0, 1, 2), context_dim=768, in_channels=4, out_channels=4,
              transformer_depth=1, middle_attention=True, linear_proj=False, adm_in_channels=None):
    """transformer_depth: int, or one int per level (0 = no attention at that level, SDXL style)."""
    mc = model_channels
    temb = mc * 4
    depths = (transformer_depth,) * len(channel_mult) if isinstance(transformer_depth, int) else tuple(transformer_depth)
    depths = tuple(d if lvl in attention_levels else 0 for lvl, d in enumerate(depths))
    mid_depth = depths[-1] if depths[-1] else max(depths)

    def resblock(name, cin, cout):
        s.norm(f"{name}.in_layers.0", cin)
        s.conv(f"{name}.in_layers.2", cout, cin, 3)
        s.linear(f"{name}.emb_layers.1", cout, temb)
        s.norm(f"{name}.out_layers.0", cout)
        s.conv(f"{name}.out_layers.3", cout, cout, 3)
        if cin != cout:
            s.conv(f"{name}.skip_connection", cout, cin, 1)

    def transformer(name, c, depth):
        _transformer(s, name, c, context_dim, depth, linear_proj)

    s.linear(f"{p}time_embed.0", temb, mc)
    s.linear(f"{p}time_embed.2", temb, temb)
    if adm_in_channels:
        s.linear(f"{p}label_emb.0.0", temb, adm_in_channels)
        s.linear(f"{p}label_emb.0.2", temb, temb)

    s.conv(f"{p}input_blocks.0.0", mc, in_channels, 3)
    chans = [mc]
    ch = mc
    idx = 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            out = mc * mult
            resblock(f"{p}input_blocks.{idx}.0", ch, out)
            ch = out
            if depths[level]:
                transformer(f"{p}input_blocks.{idx}.1", ch, depths[level])
            chans.append(ch)
            idx += 1
        if level != len(channel_mult) - 1:
            s.conv(f"{p}input_blocks.{idx}.0.op", ch, ch, 3)  # Downsample (stride 2 conv)
            chans.append(ch)
            idx += 1

    resblock(f"{p}middle_block.0", ch, ch)
    if middle_attention:
        transformer(f"{p}middle_block.1", ch, mid_depth)
        resblock(f"{p}middle_block.2", ch, ch)
    else:
        resblock(f"{p}middle_block.1", ch, ch)

    idx = 0
    for level in reversed(range(len(channel_mult))):
        mult = channel_mult[level]
        for i in range(num_res_blocks + 1):
            skip = chans.pop()
            out = mc * mult
            resblock(f"{p}output_blocks.{idx}.0", ch + skip, out)
            ch = out
            sub = 1
            if depths[level]:
                transformer(f"{p}output_blocks.{idx}.{sub}", ch, depths[level])
                sub += 1
            if level != 0 and i == num_res_blocks:
                s.conv(f"{p}output_blocks.{idx}.{sub}.conv", ch, ch, 3)  # Upsample
            idx += 1

    s.norm(f"{p}out.0", ch)
    s.conv(f"{p}out.2", out_channels, ch, 3)


# ---------------------------------- VAE (LDM AutoencoderKL layout) ---------------------------

def vae_spec(s, p, ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, z_channels=4, embed_dim=4,
             in_channels=3, out_ch=3):
    def resblock(name, cin, cout):
        s.norm(f"{name}.norm1", cin)
        s.conv(f"{name}.conv1", cout, cin, 3)
        s.norm(f"{name}.norm2", cout)
        s.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            s.conv(f"{name}.nin_shortcut", cout, cin, 1)

    def attn(name, c):
        s.norm(f"{name}.norm", c)
        for n in ("q", "k", "v", "proj_out"):
            s.conv(f"{name}.{n}", c, c, 1)  # original LDM: 1x1 convs

    e = f"{p}encoder"
    s.conv(f"{e}.conv_in", ch, in_channels, 3)
    in_ch_mult = (1,) + tuple(ch_mult)
    block_in = ch
    for lvl in range(len(ch_mult)):
        block_in = ch * in_ch_mult[lvl]
        block_out = ch * ch_mult[lvl]
        for b in range(num_res_blocks):
            resblock(f"{e}.down.{lvl}.block.{b}", block_in, block_out)
            block_in = block_out
        if lvl != len(ch_mult) - 1:
            s.conv(f"{e}.down.{lvl}.downsample.conv", block_in, block_in, 3)
    resblock(f"{e}.mid.block_1", block_in, block_in)
    attn(f"{e}.mid.attn_1", block_in)
    resblock(f"{e}.mid.block_2", block_in, block_in)
    s.norm(f"{e}.norm_out", block_in)
    s.conv(f"{e}.conv_out", 2 * z_channels, block_in, 3)

    d = f"{p}decoder"
    block_in = ch * ch_mult[-1]
    s.conv(f"{d}.conv_in", block_in, z_channels, 3)
    resblock(f"{d}.mid.block_1", block_in, block_in)
    attn(f"{d}.mid.attn_1", block_in)
    resblock(f"{d}.mid.block_2", block_in, block_in)
    for lvl in reversed(range(len(ch_mult))):
        block_out = ch * ch_mult[lvl]
        for b in range(num_res_blocks + 1):
            resblock(f"{d}.up.{lvl}.block.{b}", block_in, block_out)
            block_in = block_out
        if lvl != 0:
            s.conv(f"{d}.up.{lvl}.upsample.conv", block_in, block_in, 3)
    s.norm(f"{d}.norm_out", block_in)
    s.conv(f"{d}.conv_out", out_ch, block_in, 3)

    s.conv(f"{p}quant_conv", 2 * embed_dim, 2 * z_channels, 1)
    s.conv(f"{p}post_quant_conv", z_channels, embed_dim, 1)


# ---------------------------------- text encoders --------------------------------------------

def clip_spec(s, p, vocab=49408, max_pos=77, hidden=768, layers=12, inter=3072):
    """HF CLIPTextModel layout (SD1 `cond_stage_model.transformer.`, SDXL embedder 0)."""
    t = f"{p}text_model"
    s.emb(f"{t}.embeddings.token_embedding", vocab, hidden)
    s.emb(f"{t}.embeddings.position_embedding", max_pos, hidden)
    s.items[f"{t}.embeddings.position_ids"] = ((1, max_pos), "position_ids", None)
    for i in range(layers):
        lay = f"{t}.encoder.layers.{i}"
        for n in ("k_proj", "v_proj", "q_proj", "out_proj"):
            s.linear(f"{lay}.self_attn.{n}", hidden, hidden)
        s.norm(f"{lay}.layer_norm1", hidden)
        s.linear(f"{lay}.mlp.fc1", inter, hidden)
        s.linear(f"{lay}.mlp.fc2", hidden, inter)
        s.norm(f"{lay}.layer_norm2", hidden)
    s.norm(f"{t}.final_layer_norm", hidden)


def open_clip_spec(s, p, vocab=49408, max_pos=77, width=1024, layers=24, inter=4096, proj_dim=1024):
    """OpenCLIP text tower layout (SD2 `cond_stage_model.model.`, SDXL embedder 1)."""
    s.emb(f"{p}token_embedding", vocab, width)
    s.items[f"{p}positional_embedding"] = ((max_pos, width), "emb", None)
    for i in range(layers):
        r = f"{p}transformer.resblocks.{i}"
        s.norm(f"{r}.ln_1", width)
        s.items[f"{r}.attn.in_proj_weight"] = ((3 * width, width), "w", width)
        s.items[f"{r}.attn.in_proj_bias"] = ((3 * width,), "b", width)
        s.linear(f"{r}.attn.out_proj", width, width)
        s.norm(f"{r}.ln_2", width)
        s.linear(f"{r}.mlp.c_fc", inter, width)
        s.linear(f"{r}.mlp.c_proj", width, inter)
    s.norm(f"{p}ln_final", width)
    # OpenCLIP multiplies x @ text_projection, so the matrix is (width, proj_dim)
    s.items[f"{p}text_projection"] = ((width, proj_dim), "w", width)


# ---------------------------------- extras and tensors ---------------------------------------

def ldm_schedule_buffers(timesteps=1000, linear_start=0.00085, linear_end=0.0120):
    """The DDPM buffers that the original LatentDiffusion registers (float32)."""
    betas = np.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=np.float64) ** 2
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas, axis=0)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

    def f(a):
        return torch.tensor(a, dtype=torch.float32)

    return {
        "betas": f(betas),
        "alphas_cumprod": f(alphas_cumprod),
        "alphas_cumprod_prev": f(alphas_cumprod_prev),
        "sqrt_alphas_cumprod": f(np.sqrt(alphas_cumprod)),
        "sqrt_one_minus_alphas_cumprod": f(np.sqrt(1.0 - alphas_cumprod)),
        "log_one_minus_alphas_cumprod": f(np.log(1.0 - alphas_cumprod)),
        "sqrt_recip_alphas_cumprod": f(np.sqrt(1.0 / alphas_cumprod)),
        "sqrt_recipm1_alphas_cumprod": f(np.sqrt(1.0 / alphas_cumprod - 1)),
        "posterior_variance": f(posterior_variance),
        "posterior_log_variance_clipped": f(np.log(np.maximum(posterior_variance, 1e-20))),
        "posterior_mean_coef1": f(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
        "posterior_mean_coef2": f((1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod)),
        "model_ema.decay": torch.tensor(0.9999, dtype=torch.float32),
        "model_ema.num_updates": torch.tensor(0, dtype=torch.int32),
    }


def key_seed(seed: int, key: str) -> int:
    return (int(seed) * 0x9E3779B1 + zlib.crc32(key.encode("utf-8"))) & 0x7FFFFFFFFFFFFFFF


def make_tensor(key, shape, kind, fan_in, seed, dtype):
    if kind == "position_ids":
        return torch.arange(shape[1], dtype=torch.int64).reshape(shape)
    g = torch.Generator(device="cpu").manual_seed(key_seed(seed, key))
    t = torch.empty(shape, dtype=torch.float32)
    if kind in ("w", "b"):
        # PyTorch's default Conv/Linear init keeps activations O(1) through deep stacks
        bound = 1.0 / math.sqrt(fan_in)
        t.uniform_(-bound, bound, generator=g)
    elif kind == "norm_w":
        t.normal_(0.0, 0.05, generator=g).add_(1.0)  # not exactly 1, so affine bugs show
    elif kind == "norm_b":
        t.normal_(0.0, 0.02, generator=g)
    elif kind == "emb":
        t.normal_(0.0, 0.02, generator=g)
    elif kind == "vpred_marker":
        # std > 0.09: how ComfyUI tells an SD2 v-prediction UNet from an eps one (see detect.py)
        t.normal_(0.0, 0.2, generator=g)
    else:
        raise ValueError(f"unknown tensor kind {kind!r} for {key}")
    return t.to(dtype)


def materialize(spec: Spec, seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: make_tensor(k, shape, kind, fan_in, seed, dtype) for k, (shape, kind, fan_in) in spec.items.items()}


_ST_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int64: "I64",
              torch.int32: "I32", torch.uint8: "U8"}


def save_safetensors_deterministic(sd: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """Standard safetensors file with a byte-stable layout (tensors and header keys sorted).

    safetensors.torch.save_file writes __metadata__ in hash order, so two runs would differ in
    the header bytes; this writer makes files reproducible (same bytes as the reference script)."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    keys = sorted(sd)
    for k in keys:
        t = sd[k]
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(len(hb).to_bytes(8, "little"))
        f.write(hb)
        for k in keys:
            t = sd[k].contiguous().reshape(-1)
            f.write(t.view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)
