"""ComfyUI's `control` dict -> the residual arguments of diffusers' UNet2DConditionModel.

ComfyUI's UNet pops one entry per block from the end of each list (`apply_control`):
- "input":  added to the hidden state after input block b (and so to its skip), b = 0, 1, ...
            (T2I-adapters; None = nothing for that block);
- "middle": added after the middle block;
- "output": added to the skip of input block b as output block (n-1-b) reads it (ControlNets).
diffusers takes "output" as `down_block_additional_residuals` (same order) and "middle" as
`mid_block_additional_residual`. For "input" it has `down_intrablock_additional_residuals`: one per
down block, added after the last resnet/attention of a block with cross-attention, and after the
whole block (its downsampler included) for one without, plus an optional last one after the middle
block when its shape matches. For SD1.x and SDXL adapters these are exactly the blocks ComfyUI's
lists address; a residual for any other block is refused, and one whose shape does not match its
block is skipped with a warning, as ComfyUI does.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)


def _int(v) -> int:
    return int(v[0]) if isinstance(v, (list, tuple)) else int(v)


def _intrablock_targets(config, x_shape) -> list[tuple[int, tuple[int, ...]]]:
    """(ComfyUI input block index, (C, h, w)) where diffusers adds each down block's adapter residual."""
    nrb = _int(config.layers_per_block)
    levels = len(config.block_out_channels)
    h, w = int(x_shape[-2]), int(x_shape[-1])
    out = []
    for d, kind in enumerate(config.down_block_types):
        last_res = 1 + d * (nrb + 1) + nrb - 1
        channels = int(config.block_out_channels[d])
        if "CrossAttn" in kind or d == levels - 1:
            out.append((last_res, (channels, h, w)))
        else:                                        # after the downsampler: the next level's size
            out.append((last_res + 1, (channels, math.ceil(h / 2), math.ceil(w / 2))))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return out


def _mid_shape(config, x_shape) -> tuple[int, ...]:
    h, w = int(x_shape[-2]), int(x_shape[-1])
    for _ in range(len(config.block_out_channels) - 1):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return (int(config.block_out_channels[-1]), h, w)


def _fits(r: torch.Tensor, shape: tuple[int, ...], where: str) -> bool:
    if tuple(r.shape[1:]) == tuple(shape):
        return True
    log.warning("control residual of shape %s does not fit %s %s: skipped (as ComfyUI does)",
                tuple(r.shape), where, shape)
    return False


def unet_control_kwargs(control: dict | None, config, x: torch.Tensor, device, dtype) -> dict:
    """Keyword arguments for diffusers' UNet forward from ComfyUI's `control` dict (see the module docstring)."""
    if not control:
        return {}
    out: dict = {}
    output = control.get("output") or []
    middle = [m for m in control.get("middle") or [] if m is not None]
    if output:
        if any(r is None for r in output) or not middle:
            raise ValueError("a ControlNet chain gave residuals for only some UNet blocks; diffmesh needs all of them")
        out["down_block_additional_residuals"] = tuple(r.to(device, dtype) for r in output)
        out["mid_block_additional_residual"] = middle[-1].to(device, dtype)
    inputs = control.get("input") or []
    if not inputs and (output or not middle):
        return out
    targets = _intrablock_targets(config, x.shape)
    by_block = {b: inputs[len(inputs) - 1 - b] for b in range(len(inputs))}
    reachable = {b for b, _ in targets}
    for b, r in by_block.items():
        if r is not None and b not in reachable and b <= max(reachable):
            raise NotImplementedError(f"a control residual for UNet input block {b} is not supported: diffmesh adds "
                                      f"adapter residuals after input blocks {sorted(reachable)} (SD1.x/SDXL layout)")
    residuals = []
    for b, shape in targets:
        r = by_block.get(b)
        fits = r is not None and _fits(r, shape, f"input block {b}")
        residuals.append(r.to(device, dtype) if fits else torch.zeros((x.shape[0], *shape), device=device, dtype=dtype))
    if middle and not output and _fits(middle[-1], _mid_shape(config, x.shape), "the middle block"):
        residuals.append(middle[-1].to(device, dtype))
    out["down_intrablock_additional_residuals"] = residuals
    return out
