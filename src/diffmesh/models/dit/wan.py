"""Wan 2.1 text-to-video (1.3B, 14B) and image-to-video (14B) transformers, in the original Wan layout.

Keys (those of the Wan-Video release and ComfyUI's repackaged files): `patch_embedding` (Conv3d),
`text_embedding.0/2`, `time_embedding.0/2`, `time_projection.1`, `blocks.N.{self_attn,cross_attn}.
{q,k,v,o,norm_q,norm_k}`, `blocks.N.norm3` (LayerNorm with affine), `blocks.N.ffn.0/2`,
`blocks.N.modulation` (1, 6, dim), `head.head`, `head.modulation` (1, 2, dim); image-to-video adds
`blocks.N.cross_attn.{k_img,v_img,norm_k_img}` and `img_emb.proj.{0,1,3,4}` (CLIP-vision MLP).

diffusers' WanTransformer3DModel computes the same network but needs every key renamed (and its
timestep sinusoid uses exp/log instead of Wan's pow, a few ulps apart); this module keeps the file's
layout so weights are assigned without a conversion copy and LoRAs name the file's modules.

Facts (reference README, "Wan 2.1"; ComfyUI's WanModel):
  - timestep = sigma * 1000 -> sinusoid [cos, sin] of t * 10000^(-i/128) (pow, float32) ->
    time_embedding (Linear, SiLU, Linear) = e; time_projection(e) -> 6 vectors added to each block's
    `modulation`: (shift, scale, gate) of self-attention, (shift, scale, gate) of the FFN;
  - LayerNorm without affine (eps 1e-6) before self-attention, FFN and head; q/k RMSNorm over the
    whole width (not per head), eps 1e-6; RoPE on self-attention only, head dim split into axes
    (d - 4*(d//6), 2*(d//6), 2*(d//6)) = (44, 42, 42) for 128 (frame, row, col), theta 10000, angles in
    float64 (`rope.rope_table`);
  - cross-attention: `norm3` LayerNorm with affine on x, keys/values from every context row (the zero
    rows after the prompt that UMT5 pads to 512 are attended too);
  - the Conv3d (1, 2, 2) patch embedding runs in float32; tokens (frame, row, col) order; the head's
    token vector is (t, h, w, channel) — channel last;
  - head: (shift, scale) = `head.modulation` + e, LayerNorm, Linear.
Image-to-video: the latent gets 20 more channels (4 mask + 16 start-image latent) concatenated
before the patch embedding (zeros when none are given, as ComfyUI's `concat_cond`), and 257 CLIP
vision rows (`clip_fea`, penultimate hidden states) projected by `img_emb` come before the text
rows; cross-attention attends the image rows with `k_img`/`v_img` and adds both results.

Per-frame timesteps (Wan 2.2 TI2V 5B, `frame_timesteps` in the config): timestep (B, F) gives
e (B, F, D) and e0 (B, F, 6, D); each frame's vectors modulate that frame's tokens (`per_token`).

Detection (as ComfyUI's model_detection, "wan2.1"): `head.modulation` present; dim from its width,
heads = dim / 128, ffn from `blocks.0.ffn.0`, layers counted, in_dim from the patch embedding;
`img_emb.proj.0.bias` present -> i2v. Default sampling: ModelSamplingDiscreteFlow shift 8, the model
sees sigma * 1000.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diffmesh.models.dit import DiTFamily
from diffmesh.models.dit.rope import apply_rope, rope_table
from diffmesh.models.dit.sequence import WHOLE

EPS = 1e-6
ROPE_THETA = 10000.0
PATCH = (1, 2, 2)
FREQ_DIM = 256
HEAD_DIM = 128              # ComfyUI fixes the head width: num_heads = dim / 128
CLIP_VISION_DIM = 1280      # width of the CLIP-H vision rows the image-to-video model projects
WAN22_CHANNELS = 48         # latent channels of the Wan 2.2 VAE (the TI2V 5B model's in/out width)


class RMSNorm(nn.Module):
    """RMS norm over the whole width (all heads together), eps 1e-6."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), EPS)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, Lq, D), (B, Lk, D), (B, Lk, D) -> (B, Lq, D), unmasked softmax attention."""
    b = q.shape[0]
    q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim), RMSNorm(dim)

    def forward(self, x: torch.Tensor, rope: torch.Tensor, seq=WHOLE) -> torch.Tensor:
        """Over the whole video's tokens: `seq` (sequence parallel) attends this worker's rows to all."""
        b, s, d = x.shape
        q = apply_rope(self.norm_q(self.q(x)).view(b, s, self.heads, -1), rope)
        k = apply_rope(self.norm_k(self.k(x)).view(b, s, self.heads, -1), rope)
        v = self.v(x).view(b, s, self.heads, -1)
        out = seq.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))     # (B, H, s, hd)
        return self.o(out.transpose(1, 2).flatten(2))


class CrossAttention(nn.Module):
    """Text cross-attention; with `image` (I2V) also the CLIP-vision rows through k_img/v_img."""

    def __init__(self, dim: int, heads: int, image: bool):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim), RMSNorm(dim)
        if image:
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, image_rows: int | None) -> torch.Tensor:
        q = self.norm_q(self.q(x))
        if not hasattr(self, "k_img"):
            return self.o(_attention(q, self.norm_k(self.k(context)), self.v(context), self.heads))
        # ComfyUI slices with image_rows None as well: then both parts are the whole context
        img, txt = context[:, :image_rows], context[:, image_rows:]
        out = _attention(q, self.norm_k(self.k(txt)), self.v(txt), self.heads)
        out = out + _attention(q, self.norm_k_img(self.k_img(img)), self.v_img(img), self.heads)
        return self.o(out)


def _layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), eps=EPS)


def per_token(m: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, F, D) per-frame modulation -> (B, tokens, D): frame f's vector on its rows (tokens are
    frame-major); ComfyUI's repeat_e, which also cuts a count that is not a multiple of F."""
    if m.shape[1] == 1:
        return m
    reps = tokens // m.shape[1]
    if reps * m.shape[1] != tokens:
        reps += 1
    return torch.repeat_interleave(m, reps, dim=1)[:, :tokens]


class Block(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, heads: int, image: bool):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=EPS)
        self.cross_attn = CrossAttention(dim, heads, image)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.empty(1, 6, dim))

    def forward(self, x: torch.Tensor, e0: torch.Tensor, rope: torch.Tensor, context: torch.Tensor,
                image_rows: int | None, seq=WHOLE) -> torch.Tensor:
        # (1, 6, D) + (B, 6, D) -> six (B, 1, D): shift/scale/gate of attention, then of the FFN;
        # per-frame timesteps (Wan 2.2): (1, 1, 6, D) + (B, F, 6, D) -> six (B, L, D), each frame's rows
        if e0.ndim == 4:
            mod = [per_token(m, x.shape[1]) for m in (self.modulation.to(x.dtype).unsqueeze(0) + e0).unbind(2)]
        else:
            mod = (self.modulation.to(x.dtype) + e0).chunk(6, dim=1)
        y = self.self_attn(torch.addcmul(mod[0], _layer_norm(x), 1 + mod[1]), rope, seq)
        x = torch.addcmul(x, y, mod[2])
        x = x + self.cross_attn(self.norm3(x), context, image_rows)
        y = self.ffn(torch.addcmul(mod[3], _layer_norm(x), 1 + mod[4]))
        return torch.addcmul(x, y, mod[5])


class Head(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.head = nn.Linear(dim, out)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        if e.ndim == 3:                     # per-frame (B, F, D)
            shift, scale = (per_token(m, x.shape[1])
                            for m in (self.modulation.to(x.dtype).unsqueeze(0) + e.unsqueeze(2)).unbind(2))
        else:
            shift, scale = (self.modulation.to(x.dtype) + e.unsqueeze(1)).chunk(2, dim=1)   # (B, 1, D) each
        return self.head(torch.addcmul(shift, _layer_norm(x), 1 + scale))


class ImageProjection(nn.Module):
    """`img_emb`: LayerNorm, Linear, GELU, Linear, LayerNorm from CLIP-vision rows (1280) to the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(CLIP_VISION_DIM), nn.Linear(CLIP_VISION_DIM, CLIP_VISION_DIM),
                                  nn.GELU(), nn.Linear(CLIP_VISION_DIM, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def sinusoid(t: torch.Tensor, dim: int = FREQ_DIM) -> torch.Tensor:
    """[cos, sin] of t * 10000^(-i/half), with Wan's float32 pow (not exp/log) for the frequencies."""
    t = t.float()
    half = dim // 2
    freqs = torch.pow(10000, -torch.arange(half, device=t.device).to(t).div(half))
    args = torch.outer(t, freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def frame_timesteps(timestep: torch.Tensor, denoise_mask: torch.Tensor) -> torch.Tensor:
    """Wan 2.2 (ComfyUI's WAN22.process_timestep): timestep (B,) and the inpaint mask (B, C, T, h, w)
    -> (B, T), each latent frame's timestep times its mean mask (0 on a given start frame)."""
    mask = denoise_mask.to(timestep.dtype)
    return (mask.mean(dim=(1, 3, 4), keepdim=True) * timestep.view(-1, 1, 1, 1, 1)).reshape(timestep.shape[0], -1)


def rope_ids(frames: int, rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """(1, frames*rows*cols, 3) positions (frame, row, col) of the patch grid, frames outermost."""
    grid = torch.meshgrid(*(torch.arange(n, dtype=torch.float32, device=device) for n in (frames, rows, cols)),
                          indexing="ij")
    return torch.stack(grid, dim=-1).reshape(1, -1, 3)


def axes_dims(head_dim: int) -> tuple[int, int, int]:
    """RoPE axes (frame, row, col): (44, 42, 42) for head dim 128."""
    third = 2 * (head_dim // 6)
    return head_dim - 2 * third, third, third


class WanTransformer(nn.Module):
    """net(x (B, C, T, H, W), timestep (B,) = sigma*1000, context (B, L, 4096)) -> velocity (B, out, T, H, W).

    Image-to-video extras: `concat` (B, in_dim - C, T, H, W), the mask + start-image channels (zeros when
    absent), and `clip_fea` (B, 257, 1280), the CLIP-vision rows."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = dict(cfg)
        dim, image = cfg["dim"], cfg["model_type"] == "i2v"
        self.patch_embedding = nn.Conv3d(cfg["in_dim"], dim, kernel_size=PATCH, stride=PATCH)
        self.text_embedding = nn.Sequential(nn.Linear(cfg["text_dim"], dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            [Block(dim, cfg["ffn_dim"], cfg["num_heads"], image) for _ in range(cfg["num_layers"])])
        self.head = Head(dim, math.prod(PATCH) * cfg["out_dim"])
        if image:
            self.img_emb = ImageProjection(dim)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                concat: torch.Tensor | None = None, clip_fea: torch.Tensor | None = None,
                denoise_mask: torch.Tensor | None = None, sequence=None, **_: torch.Tensor) -> torch.Tensor:
        """`sequence` (sequence parallel, `models.dit.sequence`): this worker runs its share of the
        video tokens; cross-attention needs only its own queries, self-attention goes through it."""
        seq = sequence or WHOLE
        b, _c, t, h, w = x.shape
        if denoise_mask is not None and self.cfg.get("frame_timesteps"):
            timestep = frame_timesteps(timestep, denoise_mask)
        missing = self.cfg["in_dim"] - x.shape[1]
        if missing > 0:                     # image-to-video: start-image channels, zeros when none were given
            concat = x.new_zeros((b, missing, t, h, w)) if concat is None else concat[:, :missing].to(x.dtype)
            x = torch.cat([x, concat], dim=1)
        # pad time/rows/cols to the patch size, circularly as ComfyUI's pad_to_patch_size
        x = F.pad(x, (0, (-w) % PATCH[2], 0, (-h) % PATCH[1], 0, (-t) % PATCH[0]), mode="circular")
        weight = self.patch_embedding.weight
        tokens = F.conv3d(x.float(), weight.float(), self.patch_embedding.bias.float(), stride=PATCH).to(x.dtype)
        grid = tokens.shape[2:]                                               # (T', H', W')
        tokens = tokens.flatten(2).transpose(1, 2)                            # (B, T'H'W', D)
        rope = rope_table(rope_ids(*grid, device=x.device), axes_dims(self.cfg["dim"] // self.cfg["num_heads"]),
                          ROPE_THETA)                                          # (1, L, hd/2, 2)

        e = self.time_embedding(sinusoid(timestep.reshape(-1), FREQ_DIM).to(tokens.dtype))     # (B*F, D)
        if timestep.ndim == 2:              # per-frame timesteps (B, F) -> e (B, F, D), e0 (B, F, 6, D)
            e = e.reshape(b, -1, e.shape[-1])
            e0 = self.time_projection(e).unflatten(2, (6, self.cfg["dim"]))
        else:
            e0 = self.time_projection(e).unflatten(1, (6, self.cfg["dim"]))                    # (B, 6, D)
        context = self.text_embedding(context)
        image_rows = None
        if clip_fea is not None:
            if hasattr(self, "img_emb"):
                context = torch.cat([self.img_emb(clip_fea.to(context.dtype)), context], dim=1)
            image_rows = clip_fea.shape[-2]
        if seq is not WHOLE:
            total = tokens.shape[1]
            tokens, rope = seq.split(tokens), seq.split(rope)
            if timestep.ndim == 2:          # per-frame modulation: this worker's rows take their frames' vectors
                e0, e = seq.split(per_token(e0, total)).contiguous(), seq.split(per_token(e, total)).contiguous()
        for block in self.blocks:
            tokens = block(tokens, e0, rope, context, image_rows, seq)
        out = seq.gather(self.head(tokens, e))                                # (B, L, pt*ph*pw*C)
        co = self.cfg["out_dim"]
        out = out.view(b, *grid, *PATCH, co)                                  # (B, T', H', W', pt, ph, pw, C)
        out = torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(
            b, co, *(n * p for n, p in zip(grid, PATCH)))
        return out[:, :, :t, :h, :w]


# ---------------------------------- family ---------------------------------------------------

def is_wan(shapes: dict[str, tuple]) -> bool:
    """ComfyUI's "wan2.1" image_model test (Wan 2.1 and Wan 2.2 files alike)."""
    return ("head.modulation" in shapes and "patch_embedding.weight" in shapes
            and "blocks.0.ffn.0.weight" in shapes)


def out_channels(shapes: dict[str, tuple]) -> int:
    return shapes["head.head.weight"][0] // math.prod(PATCH)


def matches(shapes: dict[str, tuple]) -> bool:
    """Wan 2.1 T2V/I2V and the Wan 2.2 14B experts (same network, 16-channel latent); the 48-channel
    Wan 2.2 TI2V 5B is family `wan22` (models.dit.wan22), as ComfyUI's WAN22_T2V keys on out_dim 48."""
    return is_wan(shapes) and out_channels(shapes) != WAN22_CHANNELS


def config(shapes: dict[str, tuple]) -> dict:
    dim = shapes["head.modulation"][-1]
    out_dim = out_channels(shapes)
    return {
        "dim": dim, "num_heads": max(1, dim // HEAD_DIM), "out_dim": out_dim,
        "ffn_dim": shapes["blocks.0.ffn.0.weight"][0],
        "num_layers": len({k.split(".")[1] for k in shapes if k.startswith("blocks.")}),
        "in_dim": shapes["patch_embedding.weight"][1], "text_dim": shapes["text_embedding.0.weight"][1],
        "model_type": "i2v" if "img_emb.proj.0.bias" in shapes else "t2v",
        # Wan 2.2 5B: the inpaint mask gives each latent frame its own timestep (ComfyUI's WAN22)
        "frame_timesteps": out_dim == WAN22_CHANNELS,
    }


def _resize(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C, T, h, w): centre crop to the aspect ratio, then bilinear per frame
    (ComfyUI's common_upscale(..., "bilinear", "center"))."""
    if tuple(t.shape[-2:]) == (h, w):
        return t
    b, c, f, H, W = t.shape
    if W * h > H * w:                       # wider than the target: crop columns
        keep = round(H * w / h)
        t = t[..., (W - keep) // 2:(W - keep) // 2 + keep]
    elif W * h < H * w:
        keep = round(W * h / w)
        t = t[..., (H - keep) // 2:(H - keep) // 2 + keep, :]
    frames = t.movedim(2, 1).reshape(b * f, c, *t.shape[-2:])
    out = F.interpolate(frames, size=(h, w), mode="bilinear")
    return out.reshape(b, f, c, h, w).movedim(1, 2)


def concat_input(image: torch.Tensor, mask: torch.Tensor | None, x_shape: tuple) -> torch.Tensor:
    """ComfyUI's WAN21.concat_cond for an image-to-video model: [4 mask channels | start-image latent]
    (B, 20, T, h, w). `image` is the VAE latent of the start frames (WanImageToVideo's
    concat_latent_image), normalised here per 16 channels; `mask` is 0 where frames are given and is
    inverted, so the model sees 1 on the given frames."""
    from diffmesh.sampling.latent_formats import for_family

    fmt = for_family("wan21")
    t, h, w = (int(n) for n in x_shape[-3:])
    image = _resize(image.float(), h, w)
    image = torch.cat([fmt.process_in(image[:, i:i + 16]) for i in range(0, image.shape[1], 16)], dim=1)
    if mask is None:
        mask = torch.zeros((1, 4, t, h, w))
    else:
        mask = mask.float()
        mask = 1.0 - (mask if mask.shape[1] == 4 else mask.mean(dim=1, keepdim=True))
        mask = _resize(mask, h, w)
        if mask.shape[2] < t:
            mask = F.pad(mask, (0, 0, 0, 0, 0, t - mask.shape[2]))
        if mask.shape[1] == 1:
            mask = mask.repeat(1, 4, 1, 1, 1)
    return torch.cat([mask, image], dim=1)


def extra_conds(options: dict, x_shape: tuple) -> dict:
    """Image-to-video inputs a node put on the conditioning: CLIP-vision rows and the start-image latent
    with its mask (a text-to-video model ignores the latter: it has no channels for it)."""
    out = {}
    vision = options.get("clip_vision_output")
    if vision is not None:
        out["clip_fea"] = getattr(vision, "penultimate_hidden_states", vision)
    if options.get("concat_latent_image") is not None:
        out["concat"] = concat_input(options["concat_latent_image"], options.get("concat_mask"), x_shape)
    return out


def lora_names(cfg: dict) -> dict:
    """diffusers/PEFT names of Wan LoRAs (trained on WanTransformer3DModel) -> this module's names."""
    names: dict = {"condition_embedder.text_embedder.linear_1": ("text_embedding.0", None),
                   "condition_embedder.text_embedder.linear_2": ("text_embedding.2", None),
                   "condition_embedder.time_embedder.linear_1": ("time_embedding.0", None),
                   "condition_embedder.time_embedder.linear_2": ("time_embedding.2", None),
                   "condition_embedder.time_proj": ("time_projection.1", None),
                   "proj_out": ("head.head", None)}
    for i in range(cfg["num_layers"]):
        for theirs, ours in (("attn1", "self_attn"), ("attn2", "cross_attn")):
            for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o")):
                names[f"blocks.{i}.{theirs}.{a}"] = (f"blocks.{i}.{ours}.{b}", None)
        names[f"blocks.{i}.ffn.net.0.proj"] = (f"blocks.{i}.ffn.0", None)
        names[f"blocks.{i}.ffn.net.2"] = (f"blocks.{i}.ffn.2", None)
    return names


def describe(cfg: dict) -> str:
    kind = "image-to-video" if cfg["model_type"] == "i2v" else "text-to-video"
    return f"Wan 2.1 {kind}, width {cfg['dim']}, {cfg['num_heads']} heads, {cfg['num_layers']} blocks"


FAMILY = DiTFamily(
    name="wan21",
    matches=matches,
    config=config,
    convert=dict,                       # the file is already in the layout this module builds
    build=WanTransformer,
    latent_format="wan21",
    sampling=("shift", 8.0, 1000.0),    # ModelSamplingDiscreteFlow shift 8; the model sees sigma * 1000
    extra_conds=extra_conds,
    describe=describe,
    lora_names=lora_names,
)
