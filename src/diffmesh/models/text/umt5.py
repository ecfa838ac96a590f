"""UMT5-XXL, Wan's text encoder (CLIPLoader type `wan`), as ComfyUI runs it.

- The vocabulary is not shipped: ComfyUI's repackaged `umt5_xxl_*.safetensors` files carry the
  SentencePiece model themselves, as a uint8 tensor `spiece_model` holding the serialized model
  proto, and the tokenizer is read from there (`sentencepiece`, no network).
- Tokenization (ComfyUI's UMT5XXlTokenizer): no start token; every weighted piece is encoded on its
  own with SentencePiece's end token stripped; one end token 1 is appended and the row is padded
  with 0 to at least 512 tokens (never truncated).
- Encoding (UMT5XXlModel): transformers' UMT5EncoderModel (a relative position bias in every block,
  gated tanh-GELU) with the attention mask (1 through the end token) applied, last layer after the
  final norm; the output is multiplied by the mask, so the rows after the prompt are exactly 0 —
  and Wan attends them (`models.dit.wan`). Weights move tokens away from the empty prompt's
  encoding (end token, then pads), itself masked the same way.

Conditioning: `[[cond (1, L >= 512, 4096), {"pooled_output": None}]]` on the CPU in float32.
"""

from __future__ import annotations

import torch
from torch import nn

from diffmesh.errors import ModelError
from diffmesh.models import tokenizer as clip_tk
from diffmesh.models.component import DeviceAndDtype
from diffmesh.models.text import tokenizers as tk
from diffmesh.models.text.encoders import _row_tensors, weighted
from diffmesh.models.text.language import LanguageModel, _t5_config, convert_state_dict, weight_dtype
from diffmesh.models.text_encoder import EmbeddingFinder

UMT5_RULES = tk.TokenRules(end=1, pad=0, min_length=512)
SPIECE_KEY = "spiece_model"
EMBEDDING_KEY = "umt5xxl"


class SentencePieceTokenizer:
    """`tokenizer(text) -> {"input_ids": ids + [end]}` from a serialized SentencePiece model proto."""

    def __init__(self, proto: bytes):
        import sentencepiece

        self.processor = sentencepiece.SentencePieceProcessor(model_proto=proto, add_bos=False, add_eos=True)

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.processor.encode(text)}


def spiece_tokenizer(sd: dict[str, torch.Tensor], prefix: str, where: str) -> tk.PieceTokenizer:
    """The tokenizer stored in a UMT5 file (`spiece_model` beside the weights or under their prefix)."""
    tensor = sd.get(prefix + SPIECE_KEY)
    if tensor is None:
        tensor = next((v for k, v in sd.items() if k.endswith(SPIECE_KEY)), None)
    if tensor is None:
        raise ModelError("this UMT5 file has no 'spiece_model' tensor (the SentencePiece vocabulary ComfyUI reads "
                         "from the text-encoder file)", where=where,
                         fix="use ComfyUI's repackaged umt5_xxl_fp8_e4m3fn_scaled.safetensors or "
                             "umt5_xxl_fp16.safetensors (Comfy-Org/Wan_2.1_ComfyUI_repackaged), which carry it")
    # the stored tensor is the model proto byte for byte (ComfyUI saves torch.ByteTensor(list(proto)))
    return tk.PieceTokenizer(SentencePieceTokenizer(tensor.to(torch.uint8).numpy().tobytes()), drop_end=True)


def build_umt5(sd: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype, where: str) -> LanguageModel:
    """transformers' UMT5EncoderModel with the weights of a ComfyUI UMT5 file (prefix stripped); the
    sizes come from the shapes, so tiny test files build through the same code."""
    from transformers import UMT5Config, UMT5EncoderModel

    converted = convert_state_dict("t5xxl", {k: v for k, v in sd.items() if k != SPIECE_KEY})
    try:
        values = _t5_config(converted)
    except KeyError as exc:
        raise ModelError(f"UMT5 key {exc} missing", where=where,
                         fix="the file is incomplete or not a UMT5 text encoder") from exc
    config = UMT5Config(**{**values, "is_encoder_decoder": False})
    config.dense_act_fn = "gelu_pytorch_tanh"      # ComfyUI's umt5 config; "gated-gelu" alone gives gelu_new
    with torch.device("meta"):
        hf = UMT5EncoderModel(config)
    missing, unexpected = hf.load_state_dict(converted, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(f"weights do not fit the UMT5 model built from their shapes: missing {list(missing)[:4]}, "
                         f"unexpected {list(unexpected)[:4]}", where=where, fix="unsupported text encoder variant")
    # the UMT5 stack has T5's module layout: LanguageModel's T5 path runs it
    model = nn.Module.to(LanguageModel("t5xxl", hf), device=device, dtype=weight_dtype("t5xxl", dtype))
    return model.eval().requires_grad_(False)


class UMT5TextEncoder(DeviceAndDtype, nn.Module):
    """Prompt -> Wan conditioning (see the module docstring)."""

    def __init__(self, model: LanguageModel, tokenizer: tk.PieceTokenizer, clip_skip: int | None = None,
                 embedding_dirs: tuple[str, ...] = ()):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.clip_skip = clip_skip
        self.embedding_dirs = tuple(embedding_dirs)

    def row(self, text: str) -> list[clip_tk.WeightedToken]:
        finder = EmbeddingFinder(self.embedding_dirs, EMBEDDING_KEY, self.model.width) if self.embedding_dirs else None
        return tk.tokenize(self.tokenizer, text, UMT5_RULES, finder)

    @torch.no_grad()
    def encode(self, text: str) -> list:
        row = self.row(text)
        rows = [row]
        has_weights = any(w != 1.0 for _t, w in row)
        if has_weights:                    # the empty prompt of the same length: end token, then pads
            rows.append([(t, 1.0) for t in ([UMT5_RULES.end] + [UMT5_RULES.pad] * (len(row) - 1))])
        ids, overrides = _row_tensors(rows, self.device)
        masks = torch.cat([tk.attention_mask(tk.token_ids(r), UMT5_RULES) for r in rows]).to(self.device)
        # CLIPSetLastLayer reaches UMT5 as it does T5: that block's output, with the final norm
        layer = None if self.clip_skip in (None, -1) else self.clip_skip
        hidden = self.model(self.model.embed(ids, overrides), layer=layer, norm_hidden=True, mask=masks).float()
        hidden = hidden * masks[..., None].to(hidden.dtype)          # rows after the end token are exactly 0
        z = weighted(hidden[0], hidden[1], row) if has_weights else hidden[0]
        return [[z[None].cpu(), {"pooled_output": None}]]


def build(handle, located, store, device, dtype) -> UMT5TextEncoder:
    """The `wan` recipe of `text.load.BUILDERS`."""
    path, prefix = located["umt5"]
    sd = store.state_dict(path)
    tokenizer = store.derived((path, "spiece"), lambda: spiece_tokenizer(sd, prefix, path))
    weights = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    model = build_umt5(weights, device, dtype, f"{path} (UMT5)")
    return UMT5TextEncoder(model, tokenizer, handle.clip_skip, handle.embedding_dirs)
