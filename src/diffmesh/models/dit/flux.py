"""Flux.1 (dev, schnell and their fine-tunes such as Krea-1): the transformer in the BFL layout.

Our own small module, keyed exactly like the single files ComfyUI's UNETLoader reads
(`double_blocks.*`, `single_blocks.*`, `img_in`, `guidance_in`...), so loading is an assignment:
no conversion, no copy. diffusers' `FluxTransformer2DModel` computes the same function, but its
single-file converter hard-codes the 3072 width (tiny test models cannot load) and copies every
attention weight while splitting the fused projections; keeping the fused layout also lets
per-tensor fp8 scales and kohya / ComfyUI LoRA names apply as they are written in the files.

Numerics follow ComfyUI (Black Forest Labs' reference code): RoPE angles in float64, cos/sin cast
to float32, pairs (2k, 2k+1) rotated together; LayerNorm without affine, eps 1e-6; QK RMSNorm per
head; modulation `norm(x) * (1 + scale) + shift`; the final layer's modulation is (shift, scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffmesh.models.dit import DiTFamily
from diffmesh.models.dit.sequence import WHOLE

HEAD_DIM = 128               # every Flux.1 file: 3072 = 24 heads x 128; tiny test models keep the head size
AXES_DIM = (16, 56, 56)      # RoPE split of a 128-wide head: (index, row, column)
THETA = 10000
DEFAULT_GUIDANCE = 3.5       # ComfyUI's value when the conditioning carries no FluxGuidance entry


# ---------------------------------------------------------------- shared pieces

def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0,
                       factor: float = 1000.0) -> torch.Tensor:
    """[cos, sin] of (t * factor) * exp(-ln(max_period) * i / (dim/2)), float32 (B,) -> (B, dim)."""
    t = factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def rope(pos: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (B, L, dim/2) float32 of positions (B, L): angles in float64 as ComfyUI computes them."""
    scale = torch.linspace(0, (dim - 2) / dim, steps=dim // 2, dtype=torch.float64, device=pos.device)
    omega = 1.0 / (theta ** scale)
    angles = torch.einsum("...n,d->...nd", pos.to(torch.float32), omega)
    return torch.cos(angles).float(), torch.sin(angles).float()


def rope_tables(ids: torch.Tensor, axes: tuple[int, ...], theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """ids (B, L, n_axes) -> cos, sin (B, 1, L, head_dim/2), the axes concatenated in order."""
    parts = [rope(ids[..., i], axes[i], theta) for i in range(len(axes))]
    cos = torch.cat([p[0] for p in parts], dim=-1).unsqueeze(1)
    sin = torch.cat([p[1] for p in parts], dim=-1).unsqueeze(1)
    return cos, sin


def apply_rope(x: torch.Tensor, pe: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate pairs (2k, 2k+1) of x (B, H, L, D) by the angles of pe; computed in float32."""
    cos, sin = pe
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack((cos * x0 - sin * x1, sin * x0 + cos * x1), dim=-1)
    return out.reshape(x.shape).type_as(x)


def attention(q, k, v, pe, seq=WHOLE, replicated: int = 0) -> torch.Tensor:
    """q, k, v (B, H, L, D) -> (B, L, H*D), RoPE on q and k; `seq.attend` (models.dit.sequence)
    attends over the whole sequence when this worker holds only part of the image rows."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    out = seq.attend(q, k, v, replicated)
    b, h, length, d = out.shape
    return out.transpose(1, 2).reshape(b, length, h * d)


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden)
        self.out_layer = nn.Linear(hidden, hidden)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        return F.rms_norm(x, self.scale.shape, self.scale.to(x.dtype), 1e-6)


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q, k, v):
        return self.query_norm(q).to(v), self.key_norm(k).to(v)


class SelfAttention(nn.Module):
    """Weight holder: the double block calls qkv, norm and proj itself."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)


class Modulation(nn.Module):
    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.count = 6 if double else 3
        self.lin = nn.Linear(dim, self.count * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.count, dim=-1)


def _mlp(hidden: int, ratio: float) -> nn.Sequential:
    inner = int(hidden * ratio)
    return nn.Sequential(nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden))


def _split_heads(qkv: torch.Tensor, heads: int):
    b, length, _ = qkv.shape
    return qkv.view(b, length, 3, heads, -1).permute(2, 0, 3, 1, 4)      # 3 x (B, H, L, D)


def _layer_norm(x):
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def _fp16_safe(x):
    """fp16 activations of Flux overflow; ComfyUI clamps them to the fp16 range after each block."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


class DoubleStreamBlock(nn.Module):
    """Separate weights for image and text tokens, one joint attention over [text | image]."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.heads = heads
        self.img_mod = Modulation(hidden, True)
        self.img_attn = SelfAttention(hidden, heads, qkv_bias)
        self.img_mlp = _mlp(hidden, mlp_ratio)
        self.txt_mod = Modulation(hidden, True)
        self.txt_attn = SelfAttention(hidden, heads, qkv_bias)
        self.txt_mlp = _mlp(hidden, mlp_ratio)

    def _qkv(self, x, mod, attn):
        shift, scale = mod[0], mod[1]
        q, k, v = _split_heads(attn.qkv(torch.addcmul(shift, _layer_norm(x), 1 + scale)), self.heads)
        q, k = attn.norm(q, k, v)
        return q, k, v

    def forward(self, img, txt, vec, pe, seq=WHOLE):
        img_mod, txt_mod = self.img_mod(vec), self.txt_mod(vec)     # 6 x (B, 1, hidden) each
        iq, ik, iv = self._qkv(img, img_mod, self.img_attn)
        tq, tk, tv = self._qkv(txt, txt_mod, self.txt_attn)
        attn = attention(torch.cat((tq, iq), 2), torch.cat((tk, ik), 2), torch.cat((tv, iv), 2), pe, seq, txt.shape[1])
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]
        img = img + img_mod[2] * self.img_attn.proj(img_attn)
        img = img + img_mod[5] * self.img_mlp(torch.addcmul(img_mod[3], _layer_norm(img), 1 + img_mod[4]))
        txt = txt + txt_mod[2] * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod[5] * self.txt_mlp(torch.addcmul(txt_mod[3], _layer_norm(txt), 1 + txt_mod[4]))
        return img, _fp16_safe(txt)


class SingleStreamBlock(nn.Module):
    """One weight set for all tokens; attention and MLP input come from one fused linear (linear1)."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.mlp_hidden = int(hidden * mlp_ratio)
        self.linear1 = nn.Linear(hidden, 3 * hidden + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden + self.mlp_hidden, hidden)
        self.norm = QKNorm(hidden // heads)
        self.modulation = Modulation(hidden, False)

    def forward(self, x, vec, pe, seq=WHOLE, replicated: int = 0):
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1(torch.addcmul(shift, _layer_norm(x), 1 + scale)),
                               [3 * self.hidden, self.mlp_hidden], dim=-1)
        q, k, v = _split_heads(qkv, self.heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, pe, seq, replicated), F.gelu(mlp, approximate="tanh")), 2))
        return _fp16_safe(x + gate * out)


class LastLayer(nn.Module):
    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(hidden, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(torch.addcmul(shift, _layer_norm(x), 1 + scale))


class Flux(nn.Module):
    """net(x (B,16,H,W), timestep (B,) = sigma, context (B,L,4096), y (B,768), guidance (B,)) -> velocity."""

    def __init__(self, config: dict):
        super().__init__()
        c = config
        self.config = dict(c)
        hidden, heads, patch = c["hidden_size"], c["num_heads"], c["patch_size"]
        self.patch, self.heads = patch, heads
        self.in_channels, self.out_channels = c["in_channels"], c["out_channels"]
        self.guidance_embed, self.vec_in_dim = c["guidance_embed"], c["vec_in_dim"]
        self.axes_dim, self.theta = tuple(c["axes_dim"]), c["theta"]
        self.img_in = nn.Linear(self.in_channels * patch * patch, hidden)
        self.time_in = MLPEmbedder(256, hidden)
        self.vector_in = MLPEmbedder(self.vec_in_dim, hidden)
        if self.guidance_embed:
            self.guidance_in = MLPEmbedder(256, hidden)
        self.txt_in = nn.Linear(c["context_in_dim"], hidden)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(hidden, heads, c["mlp_ratio"], c["qkv_bias"])
                                           for _ in range(c["depth"]))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(hidden, heads, c["mlp_ratio"])
                                           for _ in range(c["depth_single_blocks"]))
        self.final_layer = LastLayer(hidden, self.out_channels * patch * patch)

    def _patchify(self, x):
        """(B, C, H, W) -> tokens (B, h*w, C*p*p) ordered (channel, row-in-patch, col-in-patch), ids (B, h*w, 3)."""
        p = self.patch
        b, c, hh, ww = x.shape
        pad_h, pad_w = (p - hh % p) % p, (p - ww % p) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        h, w = x.shape[2] // p, x.shape[3] // p
        tokens = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * p * p)
        ids = torch.zeros((h, w, 3), dtype=x.dtype, device=x.device)
        ids[..., 1] = torch.linspace(0, h - 1, steps=h, dtype=x.dtype, device=x.device).unsqueeze(1)
        ids[..., 2] = torch.linspace(0, w - 1, steps=w, dtype=x.dtype, device=x.device).unsqueeze(0)
        return tokens, ids.reshape(1, h * w, 3).expand(b, -1, -1), (h, w)

    def _unpatchify(self, out, hw, size):
        p, (h, w) = self.patch, hw
        b = out.shape[0]
        x = out.reshape(b, h, w, self.out_channels, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, self.out_channels, h * p, w * p)[:, :, :size[0], :size[1]]

    def forward(self, x, timestep, context, y=None, guidance=None, sequence=None, c_concat=None, **_):
        seq = sequence or WHOLE                 # sequence parallel: this worker's image rows only
        # Flux Fill / depth / canny files: their extra channels join the latent before patchify, as ComfyUI's
        img, img_ids, hw = self._patchify(x if c_concat is None else torch.cat([x, c_concat.to(x.dtype)], dim=1))
        img, img_ids = seq.split(img), seq.split(img_ids)
        dtype = img.dtype
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(timestep.float()).to(dtype))
        if self.guidance_embed and guidance is not None:
            vec = vec + self.guidance_in(timestep_embedding(guidance.float()).to(dtype))
        if y is None:
            y = torch.zeros((x.shape[0], self.vec_in_dim), dtype=dtype, device=x.device)
        vec = vec + self.vector_in(y[:, :self.vec_in_dim].to(dtype))
        txt = self.txt_in(context)
        txt_ids = torch.zeros((x.shape[0], txt.shape[1], 3), dtype=img_ids.dtype, device=x.device)
        pe = rope_tables(torch.cat((txt_ids, img_ids), 1), self.axes_dim, self.theta)
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe, seq)
        joint = torch.cat((txt, _fp16_safe(img)), 1)
        for block in self.single_blocks:
            joint = block(joint, vec, pe, seq, txt.shape[1])
        out = seq.gather(self.final_layer(joint[:, txt.shape[1]:], vec))
        return self._unpatchify(out, hw, x.shape[2:])


# ---------------------------------------------------------------- the family

def matches(shapes: dict) -> bool:
    return "double_blocks.0.img_attn.norm.key_norm.scale" in shapes and "img_in.weight" in shapes


def _count(shapes: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})


def config(shapes: dict) -> dict:
    """Everything the shapes say; head size, RoPE axes and theta are Flux facts."""
    from diffmesh.errors import ModelError

    hidden, patch_in = shapes["img_in.weight"]
    head_dim = shapes["double_blocks.0.img_attn.norm.key_norm.scale"][0]
    if head_dim != HEAD_DIM or hidden % head_dim:
        raise ModelError(f"Flux file with head size {head_dim} and width {hidden}; Flux.1 has heads of {HEAD_DIM}",
                         where="Flux transformer", fix="this is not a Flux.1 model diffmesh supports")
    return {
        "hidden_size": hidden, "num_heads": hidden // head_dim, "patch_size": 2,
        "in_channels": patch_in // 4, "out_channels": shapes["final_layer.linear.weight"][0] // 4,
        "vec_in_dim": shapes["vector_in.in_layer.weight"][1], "context_in_dim": shapes["txt_in.weight"][1],
        "mlp_ratio": shapes["double_blocks.0.img_mlp.0.weight"][0] / hidden,
        "depth": _count(shapes, "double_blocks."), "depth_single_blocks": _count(shapes, "single_blocks."),
        "guidance_embed": "guidance_in.in_layer.weight" in shapes,
        "qkv_bias": "double_blocks.0.img_attn.qkv.bias" in shapes,
        "axes_dim": list(AXES_DIM), "theta": THETA,
    }


def convert(sd: dict) -> dict:
    return sd                                  # the module uses the file's own key layout


def sampling(config: dict) -> tuple:
    """dev: ModelSamplingFlux (mu 1.15); schnell: flow with shift 1, multiplier 1 (ComfyUI's FluxSchnell)."""
    return ("flux", 1.15, 1.0) if config["guidance_embed"] else ("shift", 1.0, 1.0)


def extra_conds(options: dict, x_shape: tuple) -> dict:
    """y = the pooled CLIP-L output (zeros in the model when absent), guidance (3.5 when not set)."""
    out = {}
    pooled = options.get("pooled_output")
    if pooled is not None:
        out["y"] = pooled.float().reshape(-1, pooled.shape[-1])[:1].cpu()
    guidance = options.get("guidance", DEFAULT_GUIDANCE)
    if guidance is not None:
        out["guidance"] = torch.tensor([float(guidance)], dtype=torch.float32)
    return out


def concat_cond(options: dict, x_shape: tuple, config: dict, latent_format):
    """ComfyUI's Flux.concat_cond for files whose img_in is wider than the latent: the conditioning's
    `concat_latent_image` (zeros when absent) scaled into diffusion space, then - for Fill (in_channels
    16 + 16 + 64) - the mask (`concat_mask`, else the sampler's, else ones) at 8x the latent size,
    each 8x8 pixel block folded into 64 channels."""
    from diffmesh.models.inpaint import resize_to_batch_size
    from diffmesh.nodes.image import common_upscale

    channels, out_channels = config["in_channels"], config["out_channels"]
    if channels <= out_channels:
        return None
    b, c, h, w = (int(s) for s in x_shape)
    image = options.get("concat_latent_image")
    image = torch.zeros((b, c, h, w)) if image is None else image.float().cpu()
    image = latent_format.process_in(resize_to_batch_size(common_upscale(image, w, h, "bilinear", "center"), b))
    if channels <= out_channels * 2:
        return image
    mask = options.get("concat_mask", options.get("denoise_mask"))
    mask = torch.ones((b, 1, h, w)) if mask is None else mask.float().cpu()
    mask = common_upscale(torch.mean(mask, dim=1, keepdim=True), w * 8, h * 8, "bilinear", "center")
    mask = mask.view(mask.shape[0], h, 8, w, 8).permute(0, 2, 4, 1, 3).reshape(mask.shape[0], 64, h, w)
    return torch.cat((image, resize_to_batch_size(mask, b)), dim=1)


def describe(config: dict) -> str:
    kind = "dev" if config["guidance_embed"] else "schnell"
    return (f"Flux.1-{kind}, width {config['hidden_size']}, {config['depth']} double + "
            f"{config['depth_single_blocks']} single blocks")


def lora_names(config: dict) -> dict:
    """diffusers/PEFT module names -> (our module, row offset, rows) of the fused BFL layers.

    kohya (`lora_unet_double_blocks_0_img_attn_qkv`) and ComfyUI (`diffusion_model.double_blocks...`)
    LoRAs name our modules directly; diffusers-trained ones name diffusers' split layers."""
    h, mlp = config["hidden_size"], int(config["hidden_size"] * config["mlp_ratio"])
    out: dict = {
        "x_embedder": ("img_in", None), "context_embedder": ("txt_in", None), "proj_out": ("final_layer.linear", None),
        "time_text_embed.timestep_embedder.linear_1": ("time_in.in_layer", None),
        "time_text_embed.timestep_embedder.linear_2": ("time_in.out_layer", None),
        "time_text_embed.text_embedder.linear_1": ("vector_in.in_layer", None),
        "time_text_embed.text_embedder.linear_2": ("vector_in.out_layer", None),
        "time_text_embed.guidance_embedder.linear_1": ("guidance_in.in_layer", None),
        "time_text_embed.guidance_embedder.linear_2": ("guidance_in.out_layer", None),
    }
    for i in range(config["depth"]):
        d, b = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for j, n in enumerate("qkv"):
            out[f"{d}.attn.to_{n}"] = (f"{b}.img_attn.qkv", (j * h, h))
            out[f"{d}.attn.add_{n}_proj"] = (f"{b}.txt_attn.qkv", (j * h, h))
        out.update({f"{d}.attn.to_out.0": (f"{b}.img_attn.proj", None), f"{d}.attn.to_add_out": (f"{b}.txt_attn.proj", None),
                    f"{d}.ff.net.0.proj": (f"{b}.img_mlp.0", None), f"{d}.ff.net.2": (f"{b}.img_mlp.2", None),
                    f"{d}.ff_context.net.0.proj": (f"{b}.txt_mlp.0", None), f"{d}.ff_context.net.2": (f"{b}.txt_mlp.2", None),
                    f"{d}.norm1.linear": (f"{b}.img_mod.lin", None), f"{d}.norm1_context.linear": (f"{b}.txt_mod.lin", None)})
    for i in range(config["depth_single_blocks"]):
        d, b = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for j, n in enumerate("qkv"):
            out[f"{d}.attn.to_{n}"] = (f"{b}.linear1", (j * h, h))
        out.update({f"{d}.proj_mlp": (f"{b}.linear1", (3 * h, mlp)), f"{d}.proj_out": (f"{b}.linear2", None),
                    f"{d}.norm.linear": (f"{b}.modulation.lin", None)})
    return out


FAMILY = DiTFamily(
    name="flux", matches=matches, config=config, convert=convert, build=Flux, latent_format="flux",
    sampling=("flux", 1.15, 1.0), extra_conds=extra_conds, describe=describe,
    sampling_for=sampling, lora_names=lora_names, concat_cond=concat_cond)
