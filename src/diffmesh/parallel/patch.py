"""Exact patch parallel: one image's rows split across workers for convolutional networks (the SD
UNets and the SD / Flux VAEs), with the same numbers as one device up to fp32 rounding.

Split: every worker gets the whole input and keeps a contiguous band of rows (`band_sizes`): the
rows are cut in units of `align` rows, as evenly as possible, the first workers one unit more (3
workers on 56 latent rows with align 8: 24, 16, 16). `align` is the network's total downsampling
factor (a UNet with 3 downsamplers: 8; SDXL: 4; a VAE encoder: its pixel-to-latent factor; a VAE
decoder: 1), so every stride-2 convolution and every 2x upsampling keeps each worker's band whole
at every level: a band of r rows at the top is r/2 rows one level down, on every worker alike.
Run (`installed(module, shard)`, a context put on the network for one forward and taken off after):
  - every convolution with a kernel taller than one row (or a row stride) is swapped for
    `HaloConv2d`, which fetches the rows its kernel reaches beyond the band from the neighbour
    workers (zero rows at the image's top and bottom, as the convolution's own padding would add)
    and convolves without row padding; diffusers' Downsample2D that pads (0, 1, 0, 1) by hand
    (the VAE encoder) has its extra bottom row taken back and supplied by the neighbour instead;
  - every GroupNorm is swapped for `GlobalGroupNorm`: per-group mean and variance of the band in
    float32, merged over the workers with the counts in float64 (Chan's formula), then applied;
  - every self-attention (diffusers `Attention` without cross-attention) gets forward hooks on
    `to_k` / `to_v` that all-gather the keys and values of all bands: queries stay local, so each
    worker computes the attention of its own tokens over every key. Cross-attention stays local.
Everything else (per-pixel 1x1 convolutions, linear layers, nearest upsampling, time embeddings)
needs no exchange. Merge: the caller gathers the output bands (`PatchShard.gather_rows`).

Exchanges go through a standalone `torch.distributed` group of the workers (gloo via CPU memory;
NCCL for CUDA workers, written but not run yet: see `parallel.cfg.open_group`). Halo rows travel
as point-to-point send/recv between neighbours, the statistics as one small all-reduce per norm,
keys and values as an all-gather per self-attention.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from diffmesh.parallel.sequence import split_sizes

FAMILIES = ("sd1", "sd2", "sd2v", "sdxl")      # UNet families patch parallel runs (diffusers UNet2DConditionModel)
FAMILY_ALIGN = {"sd1": 8, "sd2": 8, "sd2v": 8, "sdxl": 4}   # full-size downsampling factor: the planner's check
HOOK = "patch-parallel"


def band_sizes(rows: int, world: int, align: int = 1) -> list[int]:
    """`rows` split into `world` contiguous bands of whole `align`-row units, first bands larger."""
    if rows % align:
        raise ValueError(f"{rows} rows are not a multiple of {align} (the network's downsampling factor): "
                         "patch parallel needs an image whose latent height is a multiple of it; "
                         "use --parallel none or crop the image")
    sizes = [units * align for units in split_sizes(rows // align, world)]
    if min(sizes) == 0:
        raise ValueError(f"{rows} rows in units of {align} cannot be split over {world} workers; "
                         "use fewer workers or a taller image")
    return sizes


def downsampling_factor(module: nn.Module) -> int:
    """Total row stride of a network: the product of the row strides of its convolutions, counted
    along one path (a UNet's down blocks, a VAE encoder's); 1 when nothing downsamples."""
    factor = 1
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and m.stride[0] > 1:
            factor *= m.stride[0]
    return factor


class PatchShard:
    """One worker's side of a patch-parallel group: `group` (gloo / NCCL) of `world` workers, this is
    `rank`; `on_device`: exchange device tensors directly (NCCL) instead of through CPU memory."""

    def __init__(self, group: Any, rank: int, world: int, on_device: bool = False):
        self.group, self.rank, self.world, self.on_device = group, rank, world, on_device
        self.rows: list[int] | None = None         # band heights at the network's input, set by split()
        self._tag = 0

    # ------------------------------------------------------------------ moving tensors
    def _out(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous() if self.on_device else t.detach().to("cpu", torch.float32).contiguous()

    def _next_tag(self) -> int:
        self._tag += 1                              # every rank runs the same exchanges in the same order
        return self._tag

    # ------------------------------------------------------------------ split / merge
    def split(self, x: torch.Tensor, align: int = 1, dim: int = -2) -> torch.Tensor:
        """This worker's band of `x` along `dim` (rows); remembers every band's height."""
        self.rows = band_sizes(x.shape[dim], self.world, align)
        start = sum(self.rows[:self.rank])
        return x.narrow(dim, start, self.rows[self.rank])

    def gather_rows(self, x: torch.Tensor, dim: int = -2, scale: float = 1.0) -> torch.Tensor:
        """All bands in rank order on every worker. `scale`: output rows per input row (a decoder: 8)."""
        lengths = [int(r * scale) for r in self.rows]
        return self._allgather(x, dim % x.ndim, lengths)

    def _allgather(self, x: torch.Tensor, dim: int, lengths: list[int]) -> torch.Tensor:
        rows = x.movedim(dim, 0)
        pad = max(lengths) - rows.shape[0]
        if pad:
            rows = torch.cat([rows, rows.new_zeros((pad,) + rows.shape[1:])])
        local = self._out(rows)
        parts = [torch.empty_like(local) for _ in range(self.world)]
        self.group.allgather([parts], [local]).wait()
        whole = torch.cat([p[:n] for p, n in zip(parts, lengths)])
        return whole.to(x.device, x.dtype).movedim(0, dim)

    # ------------------------------------------------------------------ the exchanges inside the network
    def halo(self, x: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
        """`x` (B, C, h, W) with `top` rows of the previous band above it and `bottom` rows of the next
        band below it (zeros beyond the image's edges, as a convolution's zero padding)."""
        above, below = self.halo_rows(x, top, bottom)
        edge = x.shape[:-2]
        pieces = [above if above is not None else x.new_zeros(edge + (top, x.shape[-1])), x,
                  below if below is not None else x.new_zeros(edge + (bottom, x.shape[-1]))]
        return torch.cat([p for p in pieces if p.shape[-2]], dim=-2) if top or bottom else x

    def halo_rows(self, x: torch.Tensor, top: int, bottom: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The `top` rows of the previous band and the `bottom` rows of the next one (None at the
        image's edges or for 0 rows); this band's own edge rows go to its neighbours meanwhile."""
        rank, world = self.rank, self.world
        sends, recvs, keep = [], {}, []            # keep: send buffers stay alive until sent
        tag_up, tag_down = self._next_tag(), self._next_tag()
        h = x.shape[-2]
        if max(top, bottom) > h:
            raise ValueError(f"a band of {h} rows cannot lend {max(top, bottom)} halo rows; use fewer workers")
        if rank > 0:
            if bottom:      # the previous band needs my first rows as its bottom halo
                keep.append(self._out(x[..., :bottom, :]))
                sends.append(self.group.send([keep[-1]], rank - 1, tag_up))
            if top:
                buf = self._out(x.new_empty(x.shape[:-2] + (top, x.shape[-1])))
                recvs["top"] = (buf, self.group.recv([buf], rank - 1, tag_down))
        if rank < world - 1:
            if top:         # the next band needs my last rows as its top halo
                keep.append(self._out(x[..., h - top:, :]))
                sends.append(self.group.send([keep[-1]], rank + 1, tag_down))
            if bottom:
                buf = self._out(x.new_empty(x.shape[:-2] + (bottom, x.shape[-1])))
                recvs["bottom"] = (buf, self.group.recv([buf], rank + 1, tag_up))
        received = {}
        for side, (buf, work) in recvs.items():
            work.wait()
            received[side] = buf.to(x.device, x.dtype)
        for work in sends:
            work.wait()
        return received.get("top"), received.get("bottom")

    def moments(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global (mean, biased variance) from every band's, in float64: one all-reduce of n, n*m, n*v."""
        m, v = mean.double(), var.double()
        packed = torch.stack([torch.full_like(m, float(count)), m * count, v * count, m * m * count])
        packed = packed if self.on_device else packed.cpu()
        self.group.allreduce([packed]).wait()
        packed = packed.to(mean.device)
        n, sum_m, sum_v, sum_mm = packed
        g_mean = sum_m / n
        g_var = (sum_v + sum_mm) / n - g_mean * g_mean     # sum n_i (v_i + m_i^2) / N - mean^2
        return g_mean, g_var.clamp_min(0.0)

    def gather_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, L, C) tokens of this band (rows flattened row-major) -> all bands' tokens in order.
        Every level scales the bands alike, so band r has L * rows[r] / rows[rank] tokens."""
        mine = self.rows[self.rank]
        lengths = [tokens.shape[1] * r // mine for r in self.rows]
        return self._allgather(tokens, 1, lengths)

    def agree_stop(self, stop: bool) -> bool:
        """True on every worker when any asked to stop (one small all-reduce per step)."""
        from diffmesh.parallel.collectives import agree_stop

        return agree_stop(self.group, stop, self.on_device)


class HaloConv2d(nn.Module):
    """A Conv2d run on a band: rows its kernel reaches beyond the band come from the neighbours.

    `pad_bottom_extra`: rows of zeros the caller already appended below the band (diffusers'
    Downsample2D with padding 0 pads (0, 1, 0, 1) itself); they are taken back and the image's
    bottom padding grows by as much, so only the last band sees them as zeros."""

    def __init__(self, conv: nn.Conv2d, shard: PatchShard, pad_bottom_extra: int = 0):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"patch parallel supports zero-padded convolutions with numeric padding, "
                             f"not padding={conv.padding!r} padding_mode={conv.padding_mode!r}")
        self.conv, self.shard, self.extra = conv, shard, pad_bottom_extra
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        k = conv.dilation[0] * (k - 1) + 1                   # the rows one output row reads
        self.top, self.bottom, self.stride = p, k - s - p, s  # band [r0, r1) -> outputs [r0/s, r1/s)
        if self.bottom < 0:
            raise ValueError(f"a convolution of kernel {k} rows, stride {s}, padding {p} skips rows; "
                             "patch parallel cannot split it")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra:
            x = x[..., :x.shape[-2] - self.extra, :]
        if x.shape[-2] % self.stride:
            raise ValueError(f"a band of {x.shape[-2]} rows reached a stride-{self.stride} convolution: "
                             "the split was not aligned to the network's downsampling")
        conv = self.conv
        k, s, p = self.top + self.bottom + self.stride, self.stride, self.top
        h, want = x.shape[-2], x.shape[-2] // self.stride
        if (h + 2 * p - k) // s + 1 != want or h < 2 * (k + s):
            x = self.shard.halo(x, self.top, self.bottom)    # small bands, odd paddings: one padded copy
            return F.conv2d(x, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups)
        return self._patched(x, k, s, p, want)

    def _patched(self, x: torch.Tensor, k: int, s: int, p: int, want: int) -> torch.Tensor:
        """The band convolved with the convolution's own zero padding (no copy of the band), then the
        few output rows whose window reaches a neighbour's rows recomputed from thin slabs: at high
        resolution copying every band into a padded tensor cost a tenth of the convolution."""
        conv, h = self.conv, x.shape[-2]

        def rows_of(slab: torch.Tensor) -> torch.Tensor:
            return F.conv2d(slab, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]), conv.dilation, conv.groups)
        above, below = self.shard.halo_rows(x, self.top, self.bottom)
        out = F.conv2d(x, conv.weight, conv.bias, conv.stride, (p, conv.padding[1]), conv.dilation, conv.groups)
        if above is not None:                        # output rows [0, n) read rows above the band
            n = -(-p // s)
            out[..., :n, :] = rows_of(torch.cat([above, x[..., :(n - 1) * s + k - p, :]], dim=-2))
        if below is not None:                        # output rows [first, want) read rows below it
            first = -(-(h - k + 1 + p) // s)
            out[..., first:, :] = rows_of(torch.cat([x[..., first * s - p:, :], below], dim=-2))
        return out


class GlobalGroupNorm(nn.Module):
    """GroupNorm whose statistics cover the whole image (all bands), applied to this band."""

    def __init__(self, norm: nn.GroupNorm, shard: PatchShard):
        super().__init__()
        self.norm, self.shard = norm, shard

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if x.dtype == torch.float32 and x.is_contiguous() and (norm.weight is None or norm.weight.dtype == x.dtype):
            return self._fused(x)
        b, c = x.shape[:2]
        grouped = x.reshape(b, norm.num_groups, -1)
        var, mean = torch.var_mean(grouped.float(), dim=-1, correction=0)
        mean, var = self.shard.moments(mean, var, grouped.shape[-1])
        rstd = torch.rsqrt(var + norm.eps)
        centred = grouped.float() - mean.float().unsqueeze(-1)
        out = centred.mul_(rstd.float().unsqueeze(-1)).to(x.dtype).reshape(x.shape)
        if norm.affine:
            shape = (1, c) + (1,) * (x.ndim - 2)
            out = out * norm.weight.view(shape).to(out.dtype) + norm.bias.view(shape).to(out.dtype)
        return out

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        """float32: the band's moments from per-row sums and norms (float32 over one row, float64
        across rows: one fast pass, no temporary), merged over the workers, then applied by
        batch_norm's inference kernel with one "channel" per (sample, channel). torch.var_mean over
        a whole group and the element-wise formula took five times native GroupNorm's time."""
        norm = self.norm
        b, c, groups = x.shape[0], x.shape[1], norm.num_groups
        rows = x.reshape(b, groups, -1, x.shape[-1])
        count = rows.shape[-2] * rows.shape[-1]
        total = rows.sum(-1).double().sum(-1)
        squares = torch.linalg.vector_norm(rows, dim=-1).double().square().sum(-1)
        mean = total / count
        mean, var = self.shard.moments(mean, (squares / count - mean * mean).clamp_min(0.0), count)
        per_channel = c // groups
        mean = mean.float().repeat_interleave(per_channel, dim=1).reshape(-1)
        var = var.float().repeat_interleave(per_channel, dim=1).reshape(-1)
        weight = norm.weight.repeat(b) if norm.affine else None
        bias = norm.bias.repeat(b) if norm.affine else None
        out = F.batch_norm(x.reshape(1, b * c, -1), mean, var, weight, bias, False, 0.0, norm.eps)
        return out.reshape(x.shape)


def _is_self_attention(module: nn.Module) -> bool:
    return (type(module).__name__ == "Attention" and hasattr(module, "to_k")
            and not getattr(module, "is_cross_attention", True))


def _swaps(root: nn.Module, shard: PatchShard) -> list[tuple[nn.Module, str, nn.Module, nn.Module]]:
    """(parent, child name, original, wrapper) for every convolution and GroupNorm to wrap, and the
    Wan video VAE's own layers (`parallel.patch_wan`)."""
    from diffmesh.parallel.patch_wan import hand_padded, wan_swaps

    out = []
    for parent in root.modules():
        downsample = (type(parent).__name__ == "Downsample2D" and getattr(parent, "use_conv", False)
                      and getattr(parent, "padding", None) == 0)
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and (child.kernel_size[0] > 1 or child.stride[0] > 1):
                extra = 1 if (downsample and name == "conv") or hand_padded(parent, name) else 0
                out.append((parent, name, child, HaloConv2d(child, shard, extra)))
            elif isinstance(child, nn.GroupNorm):
                out.append((parent, name, child, GlobalGroupNorm(child, shard)))
    return out + wan_swaps(root, shard)


@contextlib.contextmanager
def installed(root: nn.Module, shard: PatchShard) -> Iterator[None]:
    """Run `root` on this worker's band for the duration: wrappers swapped in, K/V hooks attached;
    everything is put back on exit, also after an error."""
    from diffmesh.devices.hooks import attach, detach

    swaps = _swaps(root, shard)
    hooked: list[nn.Module] = []

    def gather(module, args, output):
        return shard.gather_tokens(output)
    try:
        for parent, name, _, wrapper in swaps:
            setattr(parent, name, wrapper)
        for attention in [m for m in root.modules() if _is_self_attention(m)]:
            for proj in (attention.to_k, attention.to_v):
                attach(proj, HOOK, post=gather)
                hooked.append(proj)
        yield
    finally:
        for proj in hooked:
            detach(proj, HOOK)
        for parent, name, original, _ in swaps:
            setattr(parent, name, original)


class PatchModel:
    """A UNet DiffusionModel (`models.unet.UNetModel`) run on this worker's band of latent rows; its
    output bands are all-gathered, so every worker holds the whole prediction, takes the same
    sampler step and stays in lockstep (rank 0's latent is the result)."""

    def __init__(self, model: Any, shard: PatchShard):
        self.model, self.shard = model, shard
        self.align = downsampling_factor(model.unet)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def __call__(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, **extra: Any) -> torch.Tensor:
        band = self.shard.split(x, self.align)
        if extra.get("control"):            # ControlNet residuals, one per UNet level: each its band of rows
            extra = dict(extra, control={k: self._bands(v) for k, v in extra["control"].items()})
        if "c_concat" in extra:             # an inpainting UNet's extra input channels: the same rows as x
            extra = dict(extra, c_concat=self.shard.split(extra["c_concat"], self.align))
        with installed(self.model.unet, self.shard):
            out = self.model(band, timestep, context, **extra)
        return self.shard.gather_rows(out)


    def _bands(self, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return type(value)(self._bands(v) for v in value)
        if not isinstance(value, torch.Tensor) or value.ndim != 4:
            return value
        rows, total = self.shard.rows, sum(self.shard.rows)
        per = value.shape[-2] / total                              # this level's rows per input row
        start = round(sum(rows[:self.shard.rank]) * per)
        return value.narrow(-2, start, round(rows[self.shard.rank] * per))


def decode_band(vae: Any, samples: torch.Tensor, shard: PatchShard) -> torch.Tensor:
    """`models.vae.VAE.decode` of this worker's band of latent rows -> its band of image rows
    (B, band*scale, W, 3); the engine concatenates the bands in rank order."""
    band = shard.split(samples, 1)
    with installed(vae.autoencoder, shard):
        return vae.decode(band)


def encode_band(vae: Any, pixels: torch.Tensor, shard: PatchShard) -> torch.Tensor:
    """`models.vae.VAE.encode` of this worker's band of image rows (whole latent rows each) -> its
    band of latent rows (B, C, band/scale, w); the engine concatenates the bands in rank order."""
    pixels = vae.crop_to_scale(pixels)
    band = shard.split(pixels, vae.downscale, dim=1)            # images are (B, H, W, C)
    with installed(vae.autoencoder, shard):
        return vae.encode(band)
