"""GLIGEN box-conditioning files (GLIGENLoader) and the box data GLIGENTextBoxApply puts on the
conditioning, with ComfyUI's facts (comfy/gligen.py).

A GLIGEN file holds a position net (`position_net.linears.{0,2,4}`, null features: boxes + pooled text
-> object tokens) and one gated self-attention "fuser" per UNet transformer block
(`{input_blocks,middle_block,output_blocks}.N.1.transformer_blocks.0.fuser.*`), which ComfyUI runs
after each block's self-attention on the conditionings that carry boxes. `GligenPatch` builds them as
diffusers' `GLIGENTextBoundingboxProjection` and `GatedSelfAttentionDense` (the same maths and key
names) and attaches them to a diffusers UNet only for the duration of one call (`attached`), in
ComfyUI's order: the n-th fuser of the file goes to the n-th transformer block (down, mid, up).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from diffmesh.errors import ModelError

MAX_OBJECTS = 30                # ComfyUI's Gligen.max_objs: boxes beyond the first 30 do not fit


@dataclass(frozen=True)
class GligenModel:
    """GLIGEN: the file and what its keys say (text width of the boxes' pooled embeddings, fusers)."""

    path: str
    key_dim: int                # pooled text width the position net takes (768 for SD1.x)
    fusers: int                 # gated self-attention blocks in the file

    def __repr__(self) -> str:
        return f"GligenModel({self.path!r}, key_dim={self.key_dim}, fusers={self.fusers})"


def read_gligen(path: str) -> GligenModel:
    """Check a GLIGEN file by its keys (the header only) and describe it."""
    from diffmesh.models.detect import read_shapes

    shapes = read_shapes(path)
    fusers = {k.split(".fuser.")[0] for k in shapes if ".fuser." in k}
    if "position_net.null_positive_feature" not in shapes or not fusers:
        raise ModelError("not a GLIGEN model: no position_net.null_positive_feature or no "
                         "transformer_blocks.0.fuser keys", where=str(path),
                         fix="put a GLIGEN box-conditioning model (e.g. gligen_sd14_textbox_pruned) in models/gligen")
    key_dim = shapes["position_net.null_positive_feature"][0]
    return GligenModel(str(path), int(key_dim), len(fusers))


def box_tensors(latent_shape: tuple, position_params: list, key_dim: int) -> dict[str, torch.Tensor]:
    """ComfyUI's `Gligen.set_position` inputs: boxes (B, 30, 4) as x1, y1, x2, y2 fractions of the
    latent, masks (B, 30) 1 for each given box, embeddings (B, 30, key_dim) (zero rows pad).
    position_params: [(pooled (1, key_dim), height, width, y, x) in latent pixels, ...]."""
    batch, _, h, w = latent_shape[:2] + latent_shape[-2:]
    if len(position_params) > MAX_OBJECTS:
        raise ValueError(f"GLIGEN takes at most {MAX_OBJECTS} boxes, the conditioning has {len(position_params)}: "
                         "chain fewer GLIGENTextBoxApply nodes")
    boxes = torch.zeros(MAX_OBJECTS, 4)
    masks = torch.zeros(MAX_OBJECTS)
    embeddings = torch.zeros(MAX_OBJECTS, key_dim)
    for i, (pooled, height, width, y, x) in enumerate(position_params):
        boxes[i] = torch.tensor((x / w, y / h, (x + width) / w, (y + height) / h))
        masks[i] = 1.0
        embeddings[i] = pooled.reshape(-1)[:key_dim].float()
    return {"boxes": boxes.expand(batch, -1, -1), "masks": masks.expand(batch, -1),
            "embeddings": embeddings.expand(batch, -1, -1)}


def _heads(query_dim: int, key_dim: int) -> tuple[int, int]:
    """(heads, head width) as ComfyUI's load_gligen: 8 heads for SD1.x (768-wide text), else heads of 64."""
    if key_dim == 768:
        return 8, query_dim // 8
    return max(1, query_dim // 64), 64


def _fuser_parts(sd: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The fusers' weights in ComfyUI's order: input blocks 0-19, middle block, output blocks 0-19."""
    parts = []
    for section in ("input_blocks", "middle_block", "output_blocks"):
        for index in range(20):
            marker = f"{section}.{index}."
            part = {k.split(".fuser.")[-1]: v for k, v in sd.items() if ".fuser." in k and marker in k}
            if part:
                parts.append(part)
    return parts


class GligenPatch(nn.Module):
    """A GLIGEN file's position net and fusers, attachable to a diffusers UNet for one call."""

    def __init__(self, sd: dict[str, torch.Tensor], where: str):
        super().__init__()
        from diffusers.models.attention import GatedSelfAttentionDense
        from diffusers.models.embeddings import GLIGENTextBoundingboxProjection

        fusers = []
        for part in _fuser_parts(sd):
            query_dim, key_dim = part["linear.weight"].shape
            fuser = GatedSelfAttentionDense(query_dim, key_dim, *_heads(query_dim, key_dim))
            fuser.load_state_dict({k: v.float() for k, v in part.items()})
            fusers.append(fuser)
        self.fusers = nn.ModuleList(fusers)
        self.position_net = GLIGENTextBoundingboxProjection(
            positive_len=sd["position_net.null_positive_feature"].shape[0],
            out_dim=sd["position_net.linears.4.weight"].shape[0], feature_type="text-only")
        self.position_net.load_state_dict({k[len("position_net."):]: v.float() for k, v in sd.items()
                                           if k.startswith("position_net.")})
        self.where = where

    @contextmanager
    def attached(self, unet: nn.Module):
        """The fusers as each transformer block's `fuser` and the position net as the UNet's
        `position_net` (what diffusers' GLIGEN path calls), removed again when the block ends."""
        from diffusers.models.attention import BasicTransformerBlock

        blocks = [m for name in ("down_blocks", "mid_block", "up_blocks") if getattr(unet, name, None) is not None
                  for m in getattr(unet, name).modules() if isinstance(m, BasicTransformerBlock)]
        if len(blocks) != len(self.fusers):
            raise ModelError(f"this GLIGEN model has {len(self.fusers)} gated attention blocks, the UNet has "
                             f"{len(blocks)} transformer blocks", where=self.where,
                             fix="use the GLIGEN model made for this model family (SD1.x for the published ones)")
        for block, fuser in zip(blocks, self.fusers):
            block.fuser = fuser
        unet.position_net = self.position_net
        try:
            yield
        finally:
            for block in blocks:
                del block.fuser
            del unet.position_net


def load_patch(model: GligenModel, device: torch.device, dtype: torch.dtype) -> GligenPatch:
    from diffmesh.models.load import _read_file

    patch = GligenPatch(_read_file(model.path), model.path)
    return nn.Module.to(patch, device=device, dtype=dtype).eval().requires_grad_(False)
