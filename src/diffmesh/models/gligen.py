"""GLIGEN box-conditioning files (GLIGENLoader) and the box data GLIGENTextBoxApply puts on the
conditioning, with ComfyUI's facts (comfy/gligen.py).

A GLIGEN file holds a position net (`position_net.linears.{0,2,4}`, null features: boxes + pooled text
-> object tokens) and one gated self-attention "fuser" per UNet transformer block
(`{input_blocks,middle_block,output_blocks}.N.1.transformer_blocks.0.fuser.*`), which ComfyUI runs
after each block's self-attention. diffmesh reads and checks the file and builds ComfyUI's box
tensors (`box_tensors`); the UNet does not run the fusers yet, so sampling a conditioning that carries
GLIGEN boxes stops with an error (`sampling.conds`) instead of silently ignoring them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
