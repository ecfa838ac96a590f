"""Qwen-Image (text-to-image), in the diffusers-style key layout ComfyUI reads natively.

Keys: `img_in`, `txt_norm`, `txt_in`, `time_text_embed.timestep_embedder.linear_1/2`,
`transformer_blocks.N.{img,txt}_mod.1`, `.attn.{to_q,to_k,to_v,add_q_proj,add_k_proj,add_v_proj,
to_out.0,to_add_out,norm_q,norm_k,norm_added_q,norm_added_k}`, `.{img,txt}_mlp.net.0.proj/.net.2`,
`norm_out.linear`, `proj_out`. diffusers' QwenImageTransformer2DModel has this layout but is not
used: it computes RoPE angles in float32 (off by ~1e-5 rad at text positions in the hundreds) and
centres odd token grids differently from ComfyUI; this module follows ComfyUI's arithmetic.

Facts (reference README, "Qwen-Image"): 5-D latent (B, 16, 1, H, W) in the Wan 2.1 latent format;
2x2 patches, token vector ordered (channel, row, col); image ids (0, row - h//2, col - w//2), text
row j at max(h//2, w//2) + j on all three axes; sequence text then image; RoPE axes (16, 56, 56),
theta 10000; no attention mask. Timestep: [cos, sin] of sigma*1000 -> linear_1, SiLU, linear_2.
Text: RMSNorm(eps 1e-6) then txt_in. Per stream Linear(SiLU(temb)) -> 2 x (shift, scale, gate);
LayerNorm without affine, eps 1e-6; per-head q/k RMSNorm eps 1e-6; GELU(tanh) MLP; final layer
(scale, shift) — scale first.

Detection: `transformer_blocks.0.img_mod.1.weight` and `txt_norm.weight` (as ComfyUI); the width
and depth come from the shapes, heads from the q-norm width (128 in real files).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffmesh.models.dit import DiTFamily
from diffmesh.models.dit.rope import apply_rope, attention, rope_table
from diffmesh.models.dit.sequence import WHOLE

EPS = 1e-6
ROPE_THETA = 10000.0
PATCH = 2


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), EPS)


class JointAttention(nn.Module):
    """Image and text streams with their own projections, attended together (text first)."""

    def __init__(self, dim: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = dim // head_dim, head_dim
        for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"):
            setattr(self, name, nn.Linear(dim, dim))
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
            setattr(self, name, RMSNorm(head_dim))

    def forward(self, img: torch.Tensor, txt: torch.Tensor, rope: torch.Tensor,
                seq=WHOLE) -> tuple[torch.Tensor, torch.Tensor]:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, self.head_dim))           # (B, L, H, hd)

        q = torch.cat([self.norm_added_q(heads(self.add_q_proj(txt))), self.norm_q(heads(self.to_q(img)))], dim=1)
        k = torch.cat([self.norm_added_k(heads(self.add_k_proj(txt))), self.norm_k(heads(self.to_k(img)))], dim=1)
        v = torch.cat([heads(self.add_v_proj(txt)), heads(self.to_v(img))], dim=1)
        lt = txt.shape[1]
        out = attention(apply_rope(q, rope), apply_rope(k, rope), v, seq, lt)        # (B, Lt+Li, D)
        return self.to_out[0](out[:, lt:]), self.to_add_out(out[:, :lt])


class GELUProj(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = nn.ModuleList([GELUProj(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=EPS)


def _modulate(x: torch.Tensor, mod: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shift, scale, gate = mod.chunk(3, dim=-1)
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1)), gate.unsqueeze(1)


class Block(nn.Module):
    def __init__(self, dim: int, head_dim: int, mlp_hidden: int):
        super().__init__()
        self.img_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.txt_mod = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.attn = JointAttention(dim, head_dim)
        self.img_mlp = FeedForward(dim, mlp_hidden)
        self.txt_mlp = FeedForward(dim, mlp_hidden)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, temb: torch.Tensor,
                rope: torch.Tensor, seq=WHOLE) -> tuple[torch.Tensor, torch.Tensor]:
        img_mod1, img_mod2 = self.img_mod(temb).chunk(2, dim=-1)
        txt_mod1, txt_mod2 = self.txt_mod(temb).chunk(2, dim=-1)
        img_in, img_gate = _modulate(_layer_norm(img), img_mod1)
        txt_in, txt_gate = _modulate(_layer_norm(txt), txt_mod1)
        img_attn, txt_attn = self.attn(img_in, txt_in, rope, seq)
        img = img + img_gate * img_attn
        txt = txt + txt_gate * txt_attn
        img_in, img_gate = _modulate(_layer_norm(img), img_mod2)
        img = torch.addcmul(img, img_gate, self.img_mlp(img_in))
        txt_in, txt_gate = _modulate(_layer_norm(txt), txt_mod2)
        txt = torch.addcmul(txt, txt_gate, self.txt_mlp(txt_in))
        if img.dtype == torch.float16:          # both streams outgrow fp16 in real checkpoints
            img, txt = img.clip(-65504, 65504), txt.clip(-65504, 65504)
        return img, txt


class FinalLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(temb)).chunk(2, dim=1)
        return torch.addcmul(shift[:, None, :], _layer_norm(x), (1 + scale)[:, None, :])


def timestep_embedding(sigma: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """[cos, sin] of (sigma * 10000^(-i/(dim/2))) * 1000, in that order of operations (ComfyUI's)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    args = 1000 * (sigma[:, None].float() * freqs[None])
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class QwenImageTransformer(nn.Module):
    """net(x (B,16,1,H,W), timestep (B,) = sigma, context (B,L,3584)) -> velocity (B,16,1,H,W)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        dim = cfg["dim"]
        self.img_in = nn.Linear(cfg["in_channels"], dim)
        self.txt_norm = RMSNorm(cfg["joint_dim"])
        self.txt_in = nn.Linear(cfg["joint_dim"], dim)
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = nn.Module()
        self.time_text_embed.timestep_embedder.linear_1 = nn.Linear(256, dim)
        self.time_text_embed.timestep_embedder.linear_2 = nn.Linear(dim, dim)
        self.transformer_blocks = nn.ModuleList(
            [Block(dim, cfg["head_dim"], cfg["mlp_hidden"]) for _ in range(cfg["num_layers"])])
        self.norm_out = FinalLayer(dim)
        self.proj_out = nn.Linear(dim, PATCH * PATCH * cfg["out_channels"])

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, sequence=None,
                **_: torch.Tensor) -> torch.Tensor:
        seq = sequence or WHOLE             # sequence parallel: this worker's image rows only
        five_d = x.ndim == 5
        if five_d:
            if x.shape[2] != 1:
                raise ValueError(f"Qwen-Image takes one latent frame, got {x.shape[2]} (latent shape {tuple(x.shape)})")
            x = x[:, :, 0]
        b, c, h, w = x.shape
        x = F.pad(x, (0, (-w) % PATCH, 0, (-h) % PATCH), mode="circular")
        hp, wp = x.shape[2] // PATCH, x.shape[3] // PATCH
        # (B, C, hp, ph, wp, pw) -> (B, hp*wp, C*ph*pw): channel first, like Flux
        tokens = x.view(b, c, hp, PATCH, wp, PATCH).permute(0, 2, 4, 1, 3, 5).reshape(b, hp * wp, c * PATCH * PATCH)

        img_ids = torch.zeros(hp, wp, 3, device=x.device)
        img_ids[..., 1] = (torch.arange(hp, dtype=torch.float32, device=x.device) - hp // 2).unsqueeze(1)
        img_ids[..., 2] = (torch.arange(wp, dtype=torch.float32, device=x.device) - wp // 2).unsqueeze(0)
        start = max(hp // 2, wp // 2)
        txt_ids = torch.arange(start, start + context.shape[1], dtype=torch.float32, device=x.device)
        ids = torch.cat([txt_ids[:, None].expand(-1, 3), img_ids.reshape(-1, 3)], dim=0).unsqueeze(0)
        rope = rope_table(ids, self.cfg["axes_dims"], ROPE_THETA)                       # (1, Lt+Li, hd/2, 2)

        lt = context.shape[1]
        rope = torch.cat([rope[:, :lt], seq.split(rope[:, lt:])], dim=1)
        img = self.img_in(seq.split(tokens))
        txt = self.txt_in(self.txt_norm(context))
        te = self.time_text_embed.timestep_embedder
        temb = te.linear_2(F.silu(te.linear_1(timestep_embedding(timestep).to(img.dtype))))
        for block in self.transformer_blocks:
            img, txt = block(img, txt, temb, rope, seq)
        out = seq.gather(self.proj_out(self.norm_out(img, temb)))                                   # (B, hp*wp, C*4)
        co = self.cfg["out_channels"]
        out = out.view(b, hp, wp, co, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5).reshape(b, co, hp * PATCH, wp * PATCH)
        out = out[:, :, :h, :w]
        return out.unsqueeze(2) if five_d else out


# ---------------------------------- family ---------------------------------------------------

def matches(shapes: dict[str, tuple]) -> bool:
    return "transformer_blocks.0.img_mod.1.weight" in shapes and "txt_norm.weight" in shapes


def axes_dims(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes (frame, row, col): (16, 56, 56) for head dim 128, in proportion otherwise."""
    first = 2 * round(head_dim / 16)
    rest = head_dim - first
    row = 2 * (rest // 4)
    return first, row, rest - row


def config(shapes: dict[str, tuple]) -> dict:
    dim, in_channels = shapes["img_in.weight"]
    head_dim = shapes["transformer_blocks.0.attn.norm_q.weight"][0]
    return {
        "dim": dim, "in_channels": in_channels, "out_channels": shapes["proj_out.weight"][0] // (PATCH * PATCH),
        "head_dim": head_dim, "num_heads": dim // head_dim, "joint_dim": shapes["txt_in.weight"][1],
        "mlp_hidden": shapes["transformer_blocks.0.img_mlp.net.0.proj.weight"][0],
        "num_layers": len({k.split(".")[1] for k in shapes if k.startswith("transformer_blocks.")}),
        "axes_dims": axes_dims(head_dim),
    }


def lora_names(cfg: dict) -> dict:
    """LyCORIS spellings (`lycoris_<module with _>`) of the modules. The file already uses diffusers'
    names, so diffusers/PEFT (`transformer.<module>`), kohya (`lora_unet_<module with _>`) and ComfyUI
    (`diffusion_model.<module>`) LoRAs name the modules directly."""
    modules = ["img_in", "txt_in", "proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1",
               "time_text_embed.timestep_embedder.linear_2"]
    for i in range(cfg["num_layers"]):
        b = f"transformer_blocks.{i}"
        modules += [f"{b}.img_mod.1", f"{b}.txt_mod.1", f"{b}.attn.to_out.0", f"{b}.attn.to_add_out"]
        modules += [f"{b}.attn.{p}" for p in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")]
        modules += [f"{b}.{m}.{layer}" for m in ("img_mlp", "txt_mlp") for layer in ("net.0.proj", "net.2")]
    return {"lycoris_" + m.replace(".", "_"): (m, None) for m in modules}


def describe(cfg: dict) -> str:
    return f"Qwen-Image, width {cfg['dim']}, {cfg['num_heads']} heads, {cfg['num_layers']} blocks"


FAMILY = DiTFamily(
    name="qwenimage",
    matches=matches,
    config=config,
    convert=dict,                       # the file is already in the layout this module builds
    build=QwenImageTransformer,
    latent_format="wan21",              # the Wan 2.1 VAE's latent, 5-D
    sampling=("flux", 1.15, 1.0),       # ModelSamplingFlux with the default shift 1.15
    extra_conds=lambda options, x_shape: {},
    describe=describe,
    lora_names=lora_names,
)
