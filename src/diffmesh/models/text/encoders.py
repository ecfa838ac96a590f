"""Prompt text -> CONDITIONING for the transformer families, as ComfyUI encodes it.

- `FluxTextEncoder` (DualCLIPLoader `flux`): T5-XXL's last hidden states over the whole padded
  row (no attention mask; ≥ 256 rows, never truncated) are the conditioning; CLIP-L gives only the
  pooled vector (unprojected, final layer at the first end token of its first 77-token chunk).
  Weights: rows of tokens with weight w become `z_empty + (z − z_empty)·w`, where `z_empty` is
  the encoding of the empty prompt (end token, then pads) of the same length; CLIP-L's weights
  cannot change the pooled vector, which comes from the unweighted first chunk.
- `LLMTextEncoder` (CLIPLoader `lumina2` = Z-Image with Qwen3-4B, `qwen_image` = Qwen2.5-VL-7B):
  the prompt goes into the family's chat template and is tokenized whole, without weight syntax
  or padding. Z-Image takes the output of the second-to-last block (no final norm) and keeps the
  attention mask in the options; Qwen-Image takes the last layer (after the final norm) and keeps
  only the rows after the template's `<|im_start|>user\\n`, dropping the mask when it is all ones.

Both return `[[cond (1, L, D), {"pooled_output": ..., ...}]]` on the CPU in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffmesh.models import tokenizer as clip_tk
from diffmesh.models.clip import CLIPTextModel
from diffmesh.models.component import DeviceAndDtype
from diffmesh.models.prompt_weights import parse_prompt_weights
from diffmesh.models.text import tokenizers as tk
from diffmesh.models.text.language import LanguageModel
from diffmesh.models.text_encoder import EmbeddingFinder

CLIP_PAD = clip_tk.END_TOKEN


def _row_tensors(rows: list[list[clip_tk.WeightedToken]], device) -> tuple[torch.Tensor, dict]:
    """Rows of (id | vector, weight) -> (ids (N, T), {(row, col): vector}); a vector's id is 0."""
    ids, overrides = [], {}
    for r, row in enumerate(rows):
        line = []
        for c, (tok, _w) in enumerate(row):
            if isinstance(tok, torch.Tensor):
                overrides[(r, c)] = tok
                line.append(0)
            else:
                line.append(int(tok))
        ids.append(line)
    return torch.tensor(ids, dtype=torch.long, device=device), overrides


def weighted(z: torch.Tensor, z_empty: torch.Tensor, row: list[clip_tk.WeightedToken]) -> torch.Tensor:
    """ComfyUI's prompt weighting of one row (T, D): weighted tokens move away from the empty prompt."""
    w = torch.tensor([wt for _t, wt in row], dtype=z.dtype, device=z.device)[:, None]
    return torch.where(w != 1.0, z_empty + (z - z_empty) * w, z)


@dataclass(frozen=True)
class LLMRecipe:
    """How one family uses its language model.

    layer: block whose output is the conditioning (-2: second-to-last), None = last layer, normed
    drop_template: keep only the rows after the chat template's user turn (Qwen-Image)
    keep_full_mask: keep an all-ones attention mask in the options (Z-Image) instead of dropping it
    """

    name: str
    rules: tk.TokenRules
    layer: int | None
    drop_template: bool
    keep_full_mask: bool
    embedding_key: str


ZIMAGE = LLMRecipe("lumina2", tk.ZIMAGE_RULES, layer=-2, drop_template=False, keep_full_mask=True,
                   embedding_key="qwen3_4b")
QWEN_IMAGE = LLMRecipe("qwen_image", tk.QWEN_IMAGE_RULES, layer=None, drop_template=True, keep_full_mask=False,
                       embedding_key="qwen25_7b")


def encode_rows(model: LanguageModel, row: list[clip_tk.WeightedToken], rules: tk.TokenRules, layer: int | None,
                norm_hidden: bool, use_mask: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One token row -> (hidden (1, T, D) float32, ComfyUI mask (1, T)), weights applied."""
    has_weights = any(w != 1.0 for _t, w in row)
    rows = [row]
    if has_weights:
        # the empty prompt of the same length: end token (if any), then pads
        empty = ([rules.end] if rules.end is not None else []) + [rules.pad] * len(row)
        rows.append([(t, 1.0) for t in empty[:len(row)]])
    ids, overrides = _row_tensors(rows, device)
    masks = torch.cat([tk.attention_mask(tk.token_ids(r), rules) for r in rows]).to(device)
    embeds = model.embed(ids, overrides)
    hidden = model(embeds, layer=layer, norm_hidden=norm_hidden, mask=masks if use_mask else None).float()
    z = weighted(hidden[0], hidden[1], row) if has_weights else hidden[0]
    return z[None], masks[0:1]


class FluxTextEncoder(DeviceAndDtype, nn.Module):
    """CLIP-L (pooled vector) + T5-XXL (sequence): Flux.1's text encoders."""

    def __init__(self, clip_l: CLIPTextModel, t5: LanguageModel, clip_skip: int | None = None,
                 embedding_dirs: tuple[str, ...] = (), clip_tokenizer=None, t5_tokenizer=None):
        super().__init__()
        self.clip_l = clip_l
        self.t5 = t5
        self.clip_skip = clip_skip
        self.embedding_dirs = tuple(embedding_dirs)
        self.clip_tokenizer = clip_tokenizer or clip_tk.CLIPTokenizer()
        self.t5_tokenizer = t5_tokenizer or tk.t5_tokenizer()

    def _finder(self, key: str, dim: int):
        return EmbeddingFinder(self.embedding_dirs, key, dim) if self.embedding_dirs else None

    def t5_row(self, text: str) -> list[clip_tk.WeightedToken]:
        return tk.tokenize(self.t5_tokenizer, text, tk.T5XXL_RULES, self._finder("t5xxl", self.t5.width))

    def clip_chunks(self, text: str) -> list[list[clip_tk.WeightedToken]]:
        finder = self._finder("clip_l", self.clip_l.config.hidden)
        groups = clip_tk.token_groups(self.clip_tokenizer, parse_prompt_weights(text), finder)
        return clip_tk.chunk_tokens(groups, CLIP_PAD)

    @torch.no_grad()
    def pooled(self, text: str) -> torch.Tensor:
        """(1, 768): CLIP-L's final layer at the first end token of the first chunk, unprojected."""
        ids, overrides = _row_tensors(self.clip_chunks(text)[:1], self.device)
        _hidden, pooled = self.clip_l(ids, layer=-1, overrides=overrides)
        return pooled.float().cpu()

    @torch.no_grad()
    def sequence(self, text: str) -> torch.Tensor:
        """(1, L ≥ 256, 4096): T5-XXL's hidden states over the padded row, weights applied."""
        # CLIPSetLastLayer reaches T5 too in ComfyUI: a hidden block's output, with the final norm
        layer = None if self.clip_skip in (None, -1) else self.clip_skip
        z, _mask = encode_rows(self.t5, self.t5_row(text), tk.T5XXL_RULES, layer, norm_hidden=True,
                               use_mask=False, device=self.device)
        return z.cpu()

    def encode(self, text: str | dict) -> list:
        """CONDITIONING for one prompt, or {"clip_l": text, "t5xxl": text} (CLIPTextEncodeFlux)."""
        texts = text if isinstance(text, dict) else {"clip_l": text, "t5xxl": text}
        return [[self.sequence(texts["t5xxl"]), {"pooled_output": self.pooled(texts["clip_l"])}]]


class LLMTextEncoder(DeviceAndDtype, nn.Module):
    """A chat-templated language model (Qwen3-4B for Z-Image, Qwen2.5-VL-7B for Qwen-Image)."""

    def __init__(self, recipe: LLMRecipe, model: LanguageModel, clip_skip: int | None = None,
                 embedding_dirs: tuple[str, ...] = (), tokenizer=None):
        super().__init__()
        self.recipe = recipe
        self.model = model
        self.clip_skip = clip_skip
        self.embedding_dirs = tuple(embedding_dirs)
        self.tokenizer = tokenizer or tk.qwen_tokenizer()

    def row(self, text: str) -> list[clip_tk.WeightedToken]:
        finder = EmbeddingFinder(self.embedding_dirs, self.recipe.embedding_key, self.model.width) \
            if self.embedding_dirs else None
        return tk.tokenize(self.tokenizer, text, self.recipe.rules, finder)

    @torch.no_grad()
    def encode(self, text: str) -> list:
        recipe = self.recipe
        row = self.row(text)
        layer = recipe.layer if self.clip_skip is None else self.clip_skip
        z, mask = encode_rows(self.model, row, recipe.rules, layer, norm_hidden=False, use_mask=True,
                              device=self.device)
        z, mask = z.cpu(), mask.cpu()
        if recipe.drop_template:
            start = tk.qwen_image_template_end(tk.token_ids(row))
            z, mask = z[:, start:], mask[:, start:]
        options = {"pooled_output": None}
        if recipe.keep_full_mask or not bool(mask.all()):
            options["attention_mask"] = mask
        return [[z, options]]
