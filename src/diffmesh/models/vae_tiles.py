"""VAEDecodeTiled / VAEEncodeTiled tiling with ComfyUI's semantics, as plain data that can be split
over workers: a `TilePlan` lists every tile (job) of every pass; any worker runs any subset of the
jobs (`run_jobs`); `blend` puts the pieces back together, whoever made them.

ComfyUI's rules (comfy.utils.tiled_scale_multidim, comfy.sd.VAE.decode_tiled_ / encode_tiled_):
  - three passes with tiles (t/2 x 2t), (2t x t/2), (t x t) are averaged, so the seams of one pass
    fall inside tiles of the others (decode order: (2t, t/2), (t/2, 2t), (t, t) as (rows, cols);
    encode order: (t, t), (t/2, 2t), (2t, t/2));
  - tile starts step by tile - overlap from 0 to size - overlap, each clamped so the tile ends at
    the border; a sample that fits in one tile of a pass is run whole for that pass;
  - a tile's output is weighted by linear ramps of round(overlap * scale) output pixels at each of
    its edges; output positions are round(start * scale) (scale 8 decoding, 1/8 encoding).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

Job = tuple[int, int, int, int, int, int]          # (pass, sample, y0, x0, rows, cols) in input units


@dataclass(frozen=True)
class TilePlan:
    shape: tuple[int, int, int, int]               # input (B, C, H, W)
    passes: tuple[tuple[int, int], ...]            # tile (rows, cols) per pass, input units
    overlap: int                                   # input units
    scale: float                                   # output units per input unit
    out_channels: int

    @property
    def out_size(self) -> tuple[int, int]:
        return round(self.shape[2] * self.scale), round(self.shape[3] * self.scale)

    @property
    def fits(self) -> bool:
        """Every pass takes a sample whole: one run per sample gives the result (ComfyUI would run it
        once per pass and average equal outputs, which only adds rounding)."""
        return all(self.shape[2] <= t[0] and self.shape[3] <= t[1] for t in self.passes)

    def jobs(self) -> list[Job]:
        b_count, _, h, w = self.shape
        if self.fits:
            return [(0, b, 0, 0, h, w) for b in range(b_count)]
        out: list[Job] = []
        for p, tile in enumerate(self.passes):
            for b in range(b_count):
                if h <= tile[0] and w <= tile[1]:
                    out.append((p, b, 0, 0, h, w))
                    continue
                starts = [range(0, size - self.overlap, t - self.overlap) if size > t else [0]
                          for size, t in ((h, tile[0]), (w, tile[1]))]
                for y, x in itertools.product(*starts):
                    y0, x0 = max(0, min(h - self.overlap, y)), max(0, min(w - self.overlap, x))
                    out.append((p, b, y0, x0, min(tile[0], h - y0), min(tile[1], w - x0)))
        return out


def make_plan(shape: tuple[int, ...], tile: int, overlap: int, scale: float, out_channels: int,
              encode: bool) -> TilePlan:
    """The three-pass plan for a tile of `tile` input units (at least 2, so t/2 >= 1)."""
    tile = max(tile, 2)
    if overlap >= tile // 2:           # tile - overlap must stay positive for the (t/2) passes
        overlap = tile // 4
    half, double = tile // 2, tile * 2
    if encode:
        passes = ((tile, tile), (half, double), (double, half))
    else:
        passes = ((double, half), (half, double), (tile, tile))
    return TilePlan(tuple(int(s) for s in shape), passes, overlap, scale, out_channels)


def run_jobs(fn: Callable[[torch.Tensor], torch.Tensor], tensor: torch.Tensor, jobs: list[Job]) -> list[torch.Tensor]:
    """`fn` on each job's window of `tensor` (B, C, H, W) -> float32 CPU pieces."""
    return [fn(tensor[b:b + 1, :, y0:y0 + th, x0:x0 + tw]).float().cpu() for _, b, y0, x0, th, tw in jobs]


def _mask(piece: torch.Tensor, feather: int) -> torch.Tensor:
    mask = torch.ones_like(piece)
    for dim in (2, 3):
        if feather >= mask.shape[dim]:
            continue
        for t in range(feather):
            a = (t + 1) / feather
            mask.narrow(dim, t, 1).mul_(a)
            mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_(a)
    return mask


def blend(plan: TilePlan, pieces: dict[int, torch.Tensor]) -> torch.Tensor:
    """All pieces (job index -> output) -> (B, out_channels, H', W') float32, passes averaged."""
    jobs = plan.jobs()
    missing = [i for i in range(len(jobs)) if i not in pieces]
    if missing:
        raise ValueError(f"tiled VAE: {len(missing)} of {len(jobs)} tiles missing (first: {jobs[missing[0]]})")
    b_count = plan.shape[0]
    if plan.fits:
        return torch.cat([pieces[b] for b in range(b_count)])
    oh, ow = plan.out_size
    total = torch.zeros((b_count, plan.out_channels, oh, ow), dtype=torch.float32)
    feather = round(plan.overlap * plan.scale)
    for p in range(len(plan.passes)):
        for b in range(b_count):
            mine = [i for i, job in enumerate(jobs) if job[0] == p and job[1] == b]
            if len(mine) == 1 and jobs[mine[0]][4:] == tuple(plan.shape[2:]):     # the sample fit in one tile
                total[b:b + 1] += pieces[mine[0]]
                continue
            acc = torch.zeros((1, plan.out_channels, oh, ow), dtype=torch.float32)
            weight = torch.zeros_like(acc)
            for i in mine:
                piece = pieces[i]
                mask = _mask(piece, feather)
                ys, xs = round(jobs[i][2] * plan.scale), round(jobs[i][3] * plan.scale)
                acc[:, :, ys:ys + piece.shape[2], xs:xs + piece.shape[3]] += piece * mask
                weight[:, :, ys:ys + piece.shape[2], xs:xs + piece.shape[3]] += mask
            total[b:b + 1] += acc / weight
    return total / len(plan.passes)
