"""Style models (StyleModelLoader / StyleModelApply): image tokens from a CLIP-vision output.

Two kinds, told by their keys as ComfyUI's `load_style_model` does:
  - Flux Redux (`redux_up`, `redux_down`): silu MLP from SigLIP tokens to the text width;
    `get_cond` -> (B, N, text width), N = the encoder's tokens (729 for SigLIP 384).
  - T2I-Adapter style (`style_embedding`): three CLIP-style attention blocks over the CLIP-vision
    tokens plus learnt style tokens; `get_cond` -> (B, tokens, context width), 8 tokens for the
    published file.
Widths, token count and depth come from the tensors (the published files give ComfyUI's fixed
numbers: Redux 1152 -> 4096, style adapter width 1024, context 768, 3 layers, 8 heads, 8 tokens).
Style models are small and run on the CPU where the node runs, as in ComfyUI.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from diffmesh.errors import ModelError

STYLE_ADAPTER_HEADS = 8          # fixed in ComfyUI's loader, not stored in the file


class Redux(nn.Module):
    def __init__(self, vision_width: int, text_width: int):
        super().__init__()
        self.redux_up = nn.Linear(vision_width, text_width * 3)
        self.redux_down = nn.Linear(text_width * 3, text_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.redux_down(nn.functional.silu(self.redux_up(tokens)))


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """Pre-norm attention + quick-GELU MLP (sequence-first, as nn.MultiheadAttention's default)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, width * 4)), ("gelu", _QuickGELU()),
                                              ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    def __init__(self, width: int, context_dim: int, layers: int, tokens: int, heads: int = STYLE_ADAPTER_HEADS):
        super().__init__()
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])   # the file's name
        self.style_embedding = nn.Parameter(torch.zeros(1, tokens, width))
        self.ln_pre = nn.LayerNorm(width)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, width) CLIP-vision tokens -> (B, style tokens, context width)."""
        count = self.style_embedding.shape[1]
        x = torch.cat([tokens, self.style_embedding.expand(tokens.shape[0], -1, -1)], dim=1)
        x = self.transformer_layes(self.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)     # (B, N + tokens, width)
        return self.ln_post(x[:, -count:, :]) @ self.proj


class StyleModel:
    """STYLE_MODEL: `get_cond(clip_vision_output)` -> image tokens for the text conditioning."""

    def __init__(self, module: nn.Module, kind: str):
        self.module = module
        self.kind = kind

    @torch.no_grad()
    def get_cond(self, clip_vision_output) -> torch.Tensor:
        tokens = clip_vision_output.last_hidden_state
        expected = self.module.redux_up.in_features if self.kind == "redux" else self.module.ln_pre.normalized_shape[0]
        if tokens.shape[-1] != expected:
            raise ValueError(f"the {self.kind} style model takes CLIP-vision tokens {expected} wide, this "
                             f"CLIP_VISION_OUTPUT has {tokens.shape[-1]}: load the vision model it was trained "
                             "with (Flux Redux: sigclip_vision_patch14_384; style adapter: CLIP ViT-L/14)")
        return self.module(tokens.float())


def _build(sd: dict[str, torch.Tensor], where: str) -> StyleModel:
    if "redux_down.weight" in sd:
        module: nn.Module = Redux(sd["redux_up.weight"].shape[1], sd["redux_down.weight"].shape[0])
        kind = "redux"
    elif "style_embedding" in sd:
        layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layes.")})
        width, context = sd["proj"].shape
        module = StyleAdapter(width, context, layers, sd["style_embedding"].shape[1])
        kind = "style_adapter"
    else:
        raise ModelError("invalid style model: neither Flux Redux (redux_down) nor T2I style adapter "
                         "(style_embedding) keys", where=where, fix="put a style model in models/style_models")
    try:
        module.load_state_dict({k: v.float() for k, v in sd.items()})
    except RuntimeError as exc:
        raise ModelError(f"style model weights do not fit: {exc}", where=where, fix="unsupported variant") from exc
    return StyleModel(module.eval().requires_grad_(False), kind)


def load_style_model(path: str | Path) -> StyleModel:
    from diffmesh.models.load import _read_file

    return _build(_read_file(str(path)), str(path))
