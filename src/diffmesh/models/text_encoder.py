"""Prompt text -> CONDITIONING, the way ComfyUI encodes it (spec §6.8), for one or two encoders.

Per encoder: parse weights, tokenize into groups, chunk to 77, encode all chunks in one batch (plus
the empty prompt when any weight differs from 1), interpolate weighted tokens from the empty
prompt's output (`z_empty + (z - z_empty) * w`), concatenate chunks along tokens. SDXL concatenates
its two encoders along features; the pooled vector comes from one encoder's first chunk.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from diffmesh.models.component import DeviceAndDtype

from diffmesh.models import tokenizer as tk
from diffmesh.models.clip import CLIPTextModel
from diffmesh.models.families.common import FamilySpec, TextEncoderSpec
from diffmesh.models.prompt_weights import parse_prompt_weights

log = logging.getLogger(__name__)

EMBEDDING_EXTENSIONS = ("", ".safetensors", ".pt", ".bin")


def load_embedding_file(path: Path, encoder_name: str, dim: int) -> torch.Tensor | None:
    """Vectors (n, dim) for one encoder from an A1111 / SDXL / plain textual-inversion file."""
    from diffmesh.models.detect import load_torch_file

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path))
    else:
        data = load_torch_file(path)
    if encoder_name in data:                       # SDXL files: {"clip_l": ..., "clip_g": ...}
        vec = data[encoder_name]
    elif isinstance(data.get("string_to_param"), dict):
        vec = next(iter(data["string_to_param"].values()))
    elif "emb_params" in data:
        vec = data["emb_params"]
    else:
        found = [v for v in data.values() if isinstance(v, torch.Tensor) and v.shape[-1] == dim]
        vec = torch.cat([v.reshape(-1, dim) for v in found]) if found else None
    if vec is None or vec.shape[-1] != dim:
        log.warning("embedding %s has no vectors of width %d for %s; ignored", path, dim, encoder_name)
        return None
    return vec.reshape(-1, dim).float()


class EmbeddingFinder:
    """Resolves `embedding:name` in the embedding folders (first folder that has it wins)."""

    def __init__(self, dirs: tuple[str, ...], encoder_name: str, dim: int):
        self.dirs = [Path(d) for d in dirs]
        self.encoder_name = encoder_name
        self.dim = dim

    def __call__(self, name: str) -> torch.Tensor | None:
        for folder in self.dirs:
            for ext in EMBEDDING_EXTENSIONS:
                candidate = (folder / (name + ext)).resolve()
                # names come from prompts: never leave the embeddings folder
                if folder.resolve() not in candidate.parents or not candidate.is_file():
                    continue
                return load_embedding_file(candidate, self.encoder_name, self.dim)
        log.warning("embedding:%s not found in %s; ignored", name, [str(d) for d in self.dirs])
        return None


class TextEncoder(DeviceAndDtype, nn.Module):
    """One CLIP-family text encoder stack (1 encoder for SD1/SD2, 2 for SDXL)."""

    def __init__(self, family: FamilySpec, models: list[CLIPTextModel], clip_skip: int | None = None,
                 embedding_dirs: tuple[str, ...] = (), tokenizer: tk.CLIPTokenizer | None = None):
        super().__init__()
        self.family = family
        self.models = nn.ModuleList(models)
        self.clip_skip = clip_skip
        self.embedding_dirs = tuple(embedding_dirs)
        self.tokenizer = tokenizer or tk.CLIPTokenizer()

    def tokenize(self, text: str, index: int = 0) -> list[list[tk.WeightedToken]]:
        spec = self.family.text_encoders[index]
        finder = EmbeddingFinder(self.embedding_dirs, spec.name, self.models[index].config.hidden) \
            if self.embedding_dirs else None
        groups = tk.token_groups(self.tokenizer, parse_prompt_weights(text), finder)
        return tk.chunk_tokens(groups, spec.pad_token)

    @torch.no_grad()
    def encode_chunks(self, chunks: list[list[tk.WeightedToken]], index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunks of one encoder -> (cond (1, 77k, D), pooled (1, P)), float32 on CPU."""
        spec: TextEncoderSpec = self.family.text_encoders[index]
        model = self.models[index]
        rows, overrides = [], {}
        for r, chunk in enumerate(chunks):
            row = []
            for c, (tok, _w) in enumerate(chunk):
                if isinstance(tok, torch.Tensor):
                    overrides[(r, c)] = tok.to(self.device)
                    row.append(0)  # placeholder id; the vector replaces its embedding
                else:
                    row.append(int(tok))
            rows.append(row)
        weighted = any(w != 1.0 for chunk in chunks for _t, w in chunk)
        if weighted:
            rows.append(tk.empty_tokens(spec.pad_token, len(rows[0])))
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)
        layer = spec.layer if self.clip_skip is None else self.clip_skip
        hidden, pooled = model(ids, layer=layer, layer_norm_hidden=spec.layer_norm_hidden, overrides=overrides)
        hidden = hidden.float()
        out = []
        for r, chunk in enumerate(chunks):
            z = hidden[r]
            if weighted:
                w = torch.tensor([wt for _t, wt in chunk], dtype=torch.float32, device=z.device)[:, None]
                z = torch.where(w != 1.0, hidden[-1] + (z - hidden[-1]) * w, z)
            out.append(z)
        cond = torch.cat(out, dim=0)[None]                            # (1, 77k, D)
        return cond.cpu(), pooled[0:1].float().cpu()

    def encode(self, text: str) -> list:
        """ComfyUI CONDITIONING: [[cond (1, 77k, D), {"pooled_output": (1, P)}]]."""
        conds, pooled = [], None
        for i in range(len(self.models)):
            cond, pool = self.encode_chunks(self.tokenize(text, i), i)
            conds.append(cond)
            if i == self.family.pooled_from:
                pooled = pool
        if len({c.shape[1] for c in conds}) > 1:
            # the encoders chunk the same text alike; pad the shorter with its last chunk if not
            longest = max(c.shape[1] for c in conds)
            conds = [torch.cat([c] + [c[:, -77:]] * ((longest - c.shape[1]) // 77), dim=1) for c in conds]
        return [[torch.cat(conds, dim=-1), {"pooled_output": pooled}]]
