"""Tokenizers of the transformer text encoders (T5-XXL, Qwen) and ComfyUI's rules around them.

The vocabularies ship in the package (`models/data/t5`, `models/data/qwen25`) and are read with
transformers' own tokenizer classes, as ComfyUI does. What ComfyUI adds on top is described by a
`TokenRules` per encoder and applied by `tokenize`:

- the prompt is parsed for weights (`(text:1.2)`) unless weights are disabled (the Qwen encoders:
  their chat template is tokenized whole and "(red:1.2)" stays literal text);
- every weighted piece is tokenized on its own (so "(red:1.2) fox" tokenizes "red" and " fox"
  separately) and the tokenizer's own end token is dropped from each piece;
- one end token (T5: 1) is appended, then padding up to `min_length` (T5: 256, pad 0);
  nothing is ever truncated and there is a single "chunk" of any length.

`attention_mask` gives the mask ComfyUI's encoder builds from those ids: 1 up to and including
the first end token; without an end token (Qwen), 1 up to the first pad id, exclusive.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import torch

from diffmesh.models import tokenizer as clip_tokenizer
from diffmesh.models.prompt_weights import escape_parentheses, parse_prompt_weights, unescape_parentheses

T5_END, T5_PAD = 1, 0
QWEN_PAD = 151643            # <|endoftext|>
QWEN_IM_START = 151644       # <|im_start|>

ZIMAGE_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
QWEN_IMAGE_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
                       "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
                       "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n")


@dataclass(frozen=True)
class TokenRules:
    """How ComfyUI turns one prompt into the token row of one encoder.

    end:       token appended after the prompt (None: none)
    pad:       padding id; also where the mask ends when there is no end token
    min_length: pad the row to at least this many tokens
    weights:   parse `(text:w)` weights (False: the whole text is one piece at weight 1)
    template:  format string the prompt is put into before tokenizing (None: the prompt itself)
    """

    end: int | None
    pad: int
    min_length: int
    weights: bool = True
    template: str | None = None


T5XXL_RULES = TokenRules(end=T5_END, pad=T5_PAD, min_length=256)
ZIMAGE_RULES = TokenRules(end=None, pad=QWEN_PAD, min_length=1, weights=False, template=ZIMAGE_TEMPLATE)
QWEN_IMAGE_RULES = TokenRules(end=None, pad=QWEN_PAD, min_length=1, weights=False, template=QWEN_IMAGE_TEMPLATE)


def _data_dir(name: str) -> str:
    # an installed package (wheel or editable) keeps data as plain files next to the modules
    return str(resources.files("diffmesh.models") / "data" / name)


class PieceTokenizer:
    """A transformers tokenizer seen as `encode(text) -> ids` without special tokens added."""

    def __init__(self, hf_tokenizer, drop_end: bool):
        self.hf = hf_tokenizer
        self.drop_end = drop_end

    def encode(self, text: str) -> list[int]:
        ids = list(self.hf(text)["input_ids"])
        # T5's tokenizer appends </s> to every call; ComfyUI strips it per piece and adds one at the end
        return ids[:-1] if self.drop_end and ids else ids


def t5_tokenizer() -> PieceTokenizer:
    from transformers import T5TokenizerFast

    return PieceTokenizer(T5TokenizerFast.from_pretrained(_data_dir("t5"), local_files_only=True), drop_end=True)


def qwen_tokenizer() -> PieceTokenizer:
    from transformers import Qwen2Tokenizer

    return PieceTokenizer(Qwen2Tokenizer.from_pretrained(_data_dir("qwen25"), local_files_only=True), drop_end=False)


def apply_template(text: str, rules: TokenRules) -> str:
    if rules.template is None:
        return text
    # ComfyUI (Qwen-Image) uses a prompt that already starts a chat turn as the whole template
    if rules.template.startswith("<|im_start|>system") and text.startswith("<|im_start|>"):
        return text
    return rules.template.format(text)


def tokenize(tokenizer: PieceTokenizer, text: str, rules: TokenRules,
             lookup: clip_tokenizer.EmbeddingLookup | None = None) -> list[clip_tokenizer.WeightedToken]:
    """One prompt -> one row of (token id or embedding vector, weight)."""
    text = apply_template(text, rules)
    if rules.weights:
        segments = parse_prompt_weights(text)
    else:
        # escapes are still resolved as ComfyUI does ("\(" -> "(") even without weight parsing
        segments = [(unescape_parentheses(escape_parentheses(text)), 1.0)]
    row = [tok for group in clip_tokenizer.token_groups(tokenizer, segments, lookup) for tok in group]
    if rules.end is not None:
        row.append((rules.end, 1.0))
    row.extend([(rules.pad, 1.0)] * max(0, rules.min_length - len(row)))
    return row


def token_ids(row: list[clip_tokenizer.WeightedToken]) -> list[int | None]:
    """Ids of a row; None where an embedding vector stands."""
    return [None if isinstance(tok, torch.Tensor) else int(tok) for tok, _w in row]


def attention_mask(ids: list[int | None], rules: TokenRules) -> torch.Tensor:
    """(1, L) int64: ComfyUI's mask (1 through the first end token, or up to the first pad)."""
    stop = rules.end if rules.end is not None else rules.pad
    mask = []
    ended = False
    for tok in ids:
        if ended:
            mask.append(0)
            continue
        if tok is not None and tok == stop:
            ended = True
            mask.append(1 if rules.end is not None else 0)
        else:
            mask.append(1)
    return torch.tensor([mask], dtype=torch.long)


def qwen_image_template_end(ids: list[int | None]) -> int:
    """Index of the first row Qwen-Image keeps: after the second `<|im_start|>` and its `user\\n`."""
    end, seen = -1, 0
    for i, tok in enumerate(ids):
        if tok == QWEN_IM_START and seen < 2:
            end, seen = i, seen + 1
    if len(ids) > end + 3 and ids[end + 1] == 872 and ids[end + 2] == 198:   # "user", "\n"
        end += 3
    return end
