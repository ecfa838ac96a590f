"""CLIP text transformer (our own module, HF `CLIPTextModel` parameter names).

Own code rather than transformers' class because text encoding needs three things that class
does not expose together: token-embedding overrides for textual inversion, any hidden layer with
or without the final layer norm (CLIPSetLastLayer, SD2 penultimate, SDXL), and the pooled vector
of the last layer at the first end token, projected. OpenCLIP checkpoints are converted to these
names by `families.common.open_clip_to_hf`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffmesh.errors import ModelError


@dataclass(frozen=True)
class CLIPConfig:
    vocab: int
    positions: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    activation: str            # "quick_gelu" | "gelu"
    projection: int | None     # pooled projection width, None = identity (SD1 CLIP-L has none)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], activation: str) -> "CLIPConfig":
        try:
            vocab, hidden = sd["embeddings.token_embedding.weight"].shape
            positions = sd["embeddings.position_embedding.weight"].shape[0]
            inter = sd["encoder.layers.0.mlp.fc1.weight"].shape[0]
        except KeyError as e:
            raise ModelError(f"CLIP text encoder key {e} missing", where="text encoder",
                             fix="the checkpoint's text encoder is incomplete") from e
        layers = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layers\.(\d+)\.", k)))
        proj = sd["text_projection.weight"].shape[0] if "text_projection.weight" in sd else None
        # head width is 64 in every CLIP text tower SD uses (L: 12, H: 16, bigG: 20 heads)
        return cls(vocab, positions, hidden, layers, max(1, hidden // 64), inter, activation, proj)


class CLIPAttention(nn.Module):
    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape

        def split(y):  # (B,T,C) -> (B,H,T,C/H)
            return y.view(b, t, self.heads, c // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, c))


class CLIPMLP(nn.Module):
    def __init__(self, hidden: int, inter: int, activation: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inter)
        self.fc2 = nn.Linear(inter, hidden)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = x * torch.sigmoid(1.702 * x) if self.activation == "quick_gelu" else F.gelu(x)
        return self.fc2(x)


class CLIPLayer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden, eps=1e-5)
        self.self_attn = CLIPAttention(cfg.hidden, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden, eps=1e-5)
        self.mlp = CLIPMLP(cfg.hidden, cfg.intermediate, cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab, cfg.hidden)
        self.position_embedding = nn.Embedding(cfg.positions, cfg.hidden)


class CLIPEncoderStack(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPLayer(cfg) for _ in range(cfg.layers))


class CLIPTextModel(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoderStack(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden, eps=1e-5)
        self.text_projection = nn.Linear(cfg.hidden, cfg.projection, bias=False) if cfg.projection else None

    def load_converted(self, sd: dict[str, torch.Tensor], where: str) -> None:
        sd = {k: v for k, v in sd.items() if k != "embeddings.position_ids"}
        missing, unexpected = self.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ModelError(f"text encoder weights do not match: missing {missing[:4]}, unexpected {unexpected[:4]}",
                             where=where, fix="the text encoder in this file has an unsupported layout")

    def token_embeddings(self, ids: torch.Tensor, overrides: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """(N,T) ids -> (N,T,D); textual-inversion vectors replace the embeddings at their positions."""
        x = self.embeddings.token_embedding(ids)
        if overrides:
            x = x.clone()
            for (row, col), vec in overrides.items():
                x[row, col] = vec.to(x.dtype)
        return x

    def forward(self, ids: torch.Tensor, layer: int = -1, layer_norm_hidden: bool = True,
                overrides: dict | None = None, end_token: int = 49407) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (N,T) -> (hidden (N,T,D) of `layer`, pooled (N,P) from the last layer at the first end token)."""
        if not -self.config.layers <= layer < self.config.layers:
            raise ModelError(f"CLIP layer {layer} out of range for a {self.config.layers}-layer text encoder",
                             where="CLIPSetLastLayer", fix=f"use a value between -{self.config.layers} and -1")
        x = self.token_embeddings(ids, overrides or {})
        x = x + self.embeddings.position_embedding.weight[: ids.shape[1]].to(x.dtype)
        wanted = layer % self.config.layers
        selected = None
        for i, block in enumerate(self.encoder.layers):
            x = block(x)
            if i == wanted:
                selected = x
        last = self.final_layer_norm(x)
        hidden = self.final_layer_norm(selected) if layer_norm_hidden else selected
        eos = (ids == end_token).int().argmax(dim=-1)                   # first end token per row
        pooled = last[torch.arange(ids.shape[0]), eos]                  # (N, D)
        if self.text_projection is not None:
            pooled = self.text_projection(pooled)
        return hidden, pooled
