"""Z-Image (Turbo and base: one architecture), in ComfyUI's own key layout, to ComfyUI's numbers.

ComfyUI runs Z-Image as its `lumina2` model (NextDiT) with the Z-Image config; files in its layout
have a fused `attention.qkv`, `attention.out`, per-head `q_norm`/`k_norm`, modulation
`adaLN_modulation.0` (a Linear without SiLU), 2 `noise_refiner` and 2 `context_refiner` layers and
learned `cap_pad_token`/`x_pad_token`. diffusers' ZImageTransformer2DModel is not used: its RoPE
rounds the angles to float32 and its q/k norms use eps 1e-5, which moves the output by more
than the 1e-5 parity tolerance; this module follows ComfyUI's arithmetic instead.

Detection (`matches`): a caption embedder `cap_embedder.1` (Lumina 2 family) whose blocks
modulate with `adaLN_modulation.0` (Lumina 2.0 itself has SiLU first: `adaLN_modulation.1`).
ComfyUI selects Z-Image by the width 3840; the structural rule accepts the same real files and
also recognises narrow test models. Heads come from the q_norm width (head dim 128 in real files,
RoPE axes (32, 48, 48); a narrower test model splits its head dim 1/4, 3/8, 3/8).

Facts (reference README, "Z-Image"): the model sees t = 1 - sigma, embedded at t*1000;
`x += tanh(gate) * RMSNorm2(attn(RMSNorm1(x) * (1 + scale)))`, same for the SiLU-gated FFN;
norms eps 1e-5, q/k norms float32 machine epsilon; captions padded to a multiple of 32 with the
pad token, ids (i+1, 0, 0); image tokens (L_cap_padded+1, row, col), padded ones (0, 0, 0);
token vector ordered (row-in-patch, col-in-patch, channel); the output is negated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffmesh.models.dit import DiTFamily
from diffmesh.models.dit.rope import apply_rope, attention, rope_table
from diffmesh.models.dit.sequence import WHOLE

NORM_EPS = 1e-5
QK_NORM_EPS = torch.finfo(torch.float32).eps    # ComfyUI leaves the q/k norm eps unset
ROPE_THETA = 256.0
TIME_SCALE = 1000.0
PATCH = 2


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """fp16 activations of Z-Image overflow; ComfyUI maps inf/nan to the fp16 range, so do we."""
    if x.dtype == torch.float16:
        return torch.nan_to_num(x, nan=0.0, posinf=65504, neginf=-65504)
    return x


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim, QK_NORM_EPS)
        self.k_norm = RMSNorm(head_dim, QK_NORM_EPS)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, seq=WHOLE, replicated: int = 0) -> torch.Tensor:
        b, n, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.heads * hd, self.kv_heads * hd, self.kv_heads * hd], dim=-1)
        q = apply_rope(self.q_norm(q.view(b, n, self.heads, hd)), rope)       # (B, N, H, hd)
        k = apply_rope(self.k_norm(k.view(b, n, self.kv_heads, hd)), rope)
        v = v.view(b, n, self.kv_heads, hd)
        if self.kv_heads != self.heads:
            rep = self.heads // self.kv_heads
            k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
        return self.out(attention(q, k, v, seq, replicated))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(_clamp_fp16(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    """One joint transformer layer; `modulation=False` for the context refiners."""

    def __init__(self, cfg: dict, modulation: bool):
        super().__init__()
        dim = cfg["dim"]
        self.attention = Attention(dim, cfg["n_heads"], cfg["n_kv_heads"], cfg["head_dim"])
        self.feed_forward = FeedForward(dim, cfg["ffn_dim"])
        for name in ("attention_norm1", "ffn_norm1", "attention_norm2", "ffn_norm2"):
            setattr(self, name, RMSNorm(dim, NORM_EPS))
        self.modulation = modulation
        if modulation:
            self.adaLN_modulation = nn.Sequential(nn.Linear(cfg["adaln_dim"], 4 * dim))

    def forward(self, x: torch.Tensor, rope: torch.Tensor, temb: torch.Tensor | None, seq=WHOLE,
                replicated: int = 0) -> torch.Tensor:
        if not self.modulation:
            x = x + self.attention_norm2(_clamp_fp16(self.attention(self.attention_norm1(x), rope)))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        scale_msa, gate_msa, scale_mlp, gate_mlp = self.adaLN_modulation(temb).unsqueeze(1).chunk(4, dim=-1)
        attn = _clamp_fp16(self.attention(self.attention_norm1(x) * (1 + scale_msa), rope, seq, replicated))
        x = x + gate_msa.tanh() * self.attention_norm2(attn)
        ffn = _clamp_fp16(self.feed_forward(self.ffn_norm1(x) * (1 + scale_mlp)))
        return x + gate_mlp.tanh() * self.ffn_norm2(ffn)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, adaln_dim: int, out: int):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(adaln_dim, dim))

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale = self.adaLN_modulation(temb).unsqueeze(1)
        return self.linear(F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale))


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """[cos, sin] of t * 10000^(-i/(dim/2)), float32 (ComfyUI's DiT timestep embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _pad_rows(x: torch.Tensor, token: torch.Tensor, multiple: int | None) -> torch.Tensor:
    """Append copies of the learned pad token so the row count is a multiple of `multiple`."""
    extra = (-x.shape[1]) % multiple if multiple else 0
    if not extra:
        return x
    return torch.cat([x, token.to(x.dtype).expand(x.shape[0], extra, -1)], dim=1)


class ZImageTransformer(nn.Module):
    """net(x (B,16,H,W), timestep (B,) = sigma, context (B,L,cap_dim)) -> velocity (B,16,H,W)."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        dim, pin = cfg["dim"], PATCH * PATCH * cfg["in_channels"]
        self.x_embedder = nn.Linear(pin, dim)
        self.noise_refiner = nn.ModuleList([Block(cfg, True) for _ in range(cfg["n_refiner_layers"])])
        self.context_refiner = nn.ModuleList([Block(cfg, False) for _ in range(cfg["n_refiner_layers"])])
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, cfg["t_hidden"]), nn.SiLU(),
                                            nn.Linear(cfg["t_hidden"], cfg["adaln_dim"]))
        self.cap_embedder = nn.Sequential(RMSNorm(cfg["cap_feat_dim"], NORM_EPS), nn.Linear(cfg["cap_feat_dim"], dim))
        self.layers = nn.ModuleList([Block(cfg, True) for _ in range(cfg["n_layers"])])
        self.final_layer = FinalLayer(dim, cfg["adaln_dim"], pin)
        if cfg["pad_tokens_multiple"]:
            self.x_pad_token = nn.Parameter(torch.empty(1, dim))
            self.cap_pad_token = nn.Parameter(torch.empty(1, dim))

    def _rope(self, ids: torch.Tensor) -> torch.Tensor:
        return rope_table(ids, self.cfg["axes_dims"], ROPE_THETA)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, sequence=None,
                **_: torch.Tensor) -> torch.Tensor:
        # The prompt attention mask is not used: ComfyUI's Z-Image attends every caption row, pads included.
        seq = sequence or WHOLE             # sequence parallel: this worker's (padded) image rows only
        b, c, h, w = x.shape
        multiple = self.cfg["pad_tokens_multiple"]
        x = F.pad(x, (0, (-w) % PATCH, 0, (-h) % PATCH), mode="circular")
        hp, wp = x.shape[2] // PATCH, x.shape[3] // PATCH
        temb = self.t_embedder.mlp(timestep_embedding((1.0 - timestep.float()) * TIME_SCALE).to(x.dtype))

        cap = _pad_rows(self.cap_embedder(context), getattr(self, "cap_pad_token", None), multiple)  # (B, Lc, D)
        lc = cap.shape[1]
        cap_ids = torch.zeros(1, lc, 3, device=x.device)
        cap_ids[..., 0] = torch.arange(lc, dtype=torch.float32, device=x.device) + 1.0
        cap_rope = self._rope(cap_ids)

        # (B, C, hp, ph, wp, pw) -> (B, hp*wp, ph*pw*C): channel last
        tokens = x.view(b, c, hp, PATCH, wp, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(b, hp * wp, -1)
        img = _pad_rows(self.x_embedder(tokens), getattr(self, "x_pad_token", None), multiple)       # (B, Li, D)
        img_ids = torch.zeros(1, img.shape[1], 3, device=x.device)
        img_ids[0, :hp * wp, 0] = lc + 1.0
        img_ids[0, :hp * wp, 1] = torch.arange(hp, dtype=torch.float32, device=x.device).repeat_interleave(wp)
        img_ids[0, :hp * wp, 2] = torch.arange(wp, dtype=torch.float32, device=x.device).repeat(hp)
        img_rope = self._rope(img_ids)
        img, img_rope = seq.split(img), seq.split(img_rope)

        for layer in self.context_refiner:
            cap = layer(cap, cap_rope, None)
        for layer in self.noise_refiner:
            img = layer(img, img_rope, temb, seq)
        joint, rope = torch.cat([cap, img], dim=1), torch.cat([cap_rope, img_rope], dim=1)
        for layer in self.layers:
            joint = layer(joint, rope, temb, seq, lc)
        out = seq.gather(self.final_layer(joint[:, lc:], temb))[:, :hp * wp]                 # (B, hp*wp, p*p*C)
        out = out.reshape(b, hp, wp, PATCH, PATCH, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, hp * PATCH, wp * PATCH)
        return -out[:, :, :h, :w]


# ---------------------------------- family ---------------------------------------------------

def matches(shapes: dict[str, tuple]) -> bool:
    return "cap_embedder.1.weight" in shapes and "x_embedder.weight" in shapes and any(
        k.endswith(".adaLN_modulation.0.weight") and k.startswith(("layers.", "noise_refiner.")) for k in shapes)


def _count(shapes: dict[str, tuple], prefix: str) -> int:
    return len({k.split(".")[1] for k in shapes if k.startswith(prefix + ".")})


def axes_dims(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes (caption/time, row, col): (32, 48, 48) for head dim 128, in proportion otherwise."""
    first = 2 * round(head_dim / 8)
    rest = head_dim - first
    row = 2 * (rest // 4)
    return first, row, rest - row


def config(shapes: dict[str, tuple]) -> dict:
    dim, pin = shapes["x_embedder.weight"]
    head_dim = shapes["layers.0.attention.q_norm.weight"][0] if "layers.0.attention.q_norm.weight" in shapes \
        else shapes["noise_refiner.0.attention.q_norm.weight"][0]
    qkv_rows = shapes["noise_refiner.0.attention.qkv.weight"][0]
    heads = dim // head_dim
    return {
        "dim": dim, "in_channels": pin // (PATCH * PATCH), "head_dim": head_dim, "n_heads": heads,
        "n_kv_heads": (qkv_rows // head_dim - heads) // 2,
        "ffn_dim": shapes["noise_refiner.0.feed_forward.w1.weight"][0],
        "cap_feat_dim": shapes["cap_embedder.1.weight"][1],
        "t_hidden": shapes["t_embedder.mlp.0.weight"][0], "adaln_dim": shapes["t_embedder.mlp.2.weight"][0],
        "n_layers": _count(shapes, "layers"), "n_refiner_layers": _count(shapes, "noise_refiner"),
        "axes_dims": axes_dims(head_dim),
        "pad_tokens_multiple": 32 if "cap_pad_token" in shapes else None,
    }


def lora_names(cfg: dict) -> dict:
    """LoRA module names that differ from this module's -> (module, rows of its weight or None).

    diffusers/PEFT Z-Image LoRAs (and ComfyUI- or kohya-spelled ones trained on diffusers' names) split
    the fused `attention.qkv` into `to_q`/`to_k`/`to_v` rows and call `attention.out` `to_out.0`,
    `x_embedder` `all_x_embedder.2-1` and the final layer `all_final_layer.2-1`. kohya and ComfyUI
    LoRAs on ComfyUI's own names need no entry (the loader accepts every module's own name)."""
    q, kv = cfg["n_heads"] * cfg["head_dim"], cfg["n_kv_heads"] * cfg["head_dim"]
    names: dict = {"all_x_embedder.2-1": ("x_embedder", None),
                   "all_final_layer.2-1.linear": ("final_layer.linear", None),
                   "all_final_layer.2-1.adaLN_modulation.1": ("final_layer.adaLN_modulation.1", None)}
    blocks = [f"layers.{i}" for i in range(cfg["n_layers"])] + [
        f"{kind}.{i}" for kind in ("noise_refiner", "context_refiner") for i in range(cfg["n_refiner_layers"])]
    for b in blocks:
        names.update({f"{b}.attention.to_q": (f"{b}.attention.qkv", (0, q)),
                      f"{b}.attention.to_k": (f"{b}.attention.qkv", (q, kv)),
                      f"{b}.attention.to_v": (f"{b}.attention.qkv", (q + kv, kv)),
                      f"{b}.attention.to_out.0": (f"{b}.attention.out", None)})
    out = dict(names)
    for name, target in names.items():        # the same names as ComfyUI, kohya and LyCORIS files write them
        flat = name.replace(".", "_")
        out.update({"diffusion_model." + name: target, "lora_unet_" + flat: target, "lycoris_" + flat: target})
    return out


def describe(cfg: dict) -> str:
    return (f"Z-Image, width {cfg['dim']}, {cfg['n_heads']} heads, {cfg['n_layers']} layers "
            f"+ {cfg['n_refiner_layers']} noise and context refiners")


FAMILY = DiTFamily(
    name="zimage",
    matches=matches,
    config=config,
    convert=dict,                       # the file is already in the layout this module builds
    build=ZImageTransformer,
    latent_format="flux",               # Z-Image uses the Flux VAE and its latent format
    sampling=("shift", 3.0, 1.0),       # ModelSamplingDiscreteFlow shift 3, the model sees sigma
    extra_conds=lambda options, x_shape: {},
    describe=describe,
    lora_names=lora_names,
)
