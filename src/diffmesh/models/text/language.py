"""The transformer text encoders as transformers' own classes, built from shipped configs.

`build_language_model(kind, sd, device, dtype)` makes T5-XXL (`T5EncoderModel`), Qwen3-4B
(`Qwen3Model`) or the Qwen2.5-VL-7B language model (`Qwen2Model`: for text-only input the VL
model's multimodal RoPE gives every axis the same position, which is plain 1-D RoPE) from a state
dict in ComfyUI's file layout, with no hub access. The architecture comes from
`data/text_configs.json`; widths, depths and head counts are read from the weights' shapes, so
tiny test files build through the same code as the real ones.

`LanguageModel.forward` returns the hidden states ComfyUI takes: the last layer (after the final
norm) or the output of one block (`layer` < 0 counts from the end, like CLIPSetLastLayer), with or
without the final norm applied to it.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import torch
from torch import nn

from diffmesh.errors import ModelError

HF_CLASSES = {"t5xxl": ("T5Config", "T5EncoderModel"), "qwen3": ("Qwen3Config", "Qwen3Model"),
              "qwen25": ("Qwen2Config", "Qwen2Model")}
CONFIG_NAMES = {"t5xxl": "t5xxl", "qwen3": "qwen3_4b", "qwen25": "qwen25_7b"}


def shipped_config(kind: str) -> dict:
    text = (resources.files("diffmesh.models") / "data" / "text_configs.json").read_text()
    return dict(json.loads(text)[CONFIG_NAMES[kind]])


def _layers(sd: dict[str, torch.Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in sd if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


def _t5_config(sd: dict[str, torch.Tensor]) -> dict:
    cfg = shipped_config("t5xxl")
    vocab, d_model = sd["shared.weight"].shape
    buckets, heads = sd["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
    cfg.update(vocab_size=vocab, d_model=d_model, num_heads=heads, relative_attention_num_buckets=buckets,
               d_kv=sd["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0] // heads,
               d_ff=sd["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0],
               num_layers=_layers(sd, r"encoder\.block\.(\d+)\."))
    return cfg


def _qwen_config(kind: str, sd: dict[str, torch.Tensor]) -> dict:
    cfg = shipped_config(kind)
    vocab, hidden = sd["embed_tokens.weight"].shape
    # Qwen3 states its head width in the q/k norms; Qwen2.5 always uses 128
    head_dim = sd["layers.0.self_attn.q_norm.weight"].shape[0] if kind == "qwen3" else cfg["head_dim"]
    cfg.update(vocab_size=vocab, hidden_size=hidden, head_dim=head_dim,
               num_attention_heads=sd["layers.0.self_attn.q_proj.weight"].shape[0] // head_dim,
               num_key_value_heads=sd["layers.0.self_attn.k_proj.weight"].shape[0] // head_dim,
               intermediate_size=sd["layers.0.mlp.gate_proj.weight"].shape[0],
               num_hidden_layers=_layers(sd, r"layers\.(\d+)\."))
    return cfg


SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")


def dequantize_scaled_fp8(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """"Scaled fp8" files (t5xxl_fp8_e4m3fn_scaled, qwen_3_4b_fp8_scaled): weight × its per-tensor
    scale, in float32; the markers and input scales go. Other files pass through unchanged."""
    scales = {k[: -len(suffix)]: v for k, v in sd.items() for suffix in SCALE_SUFFIXES if k.endswith(suffix)}
    if not scales and "scaled_fp8" not in sd:
        return sd
    out = {}
    for key, value in sd.items():
        if key == "scaled_fp8" or key.endswith(SCALE_SUFFIXES + DROPPED_SUFFIXES):
            continue
        scale = scales.get(key[: -len(".weight")]) if key.endswith(".weight") else None
        out[key] = value.float() * scale.float() if scale is not None else value
    return out


def convert_state_dict(kind: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI file keys (prefix already stripped) -> the transformers module's keys."""
    sd = dequantize_scaled_fp8(sd)
    if kind == "t5xxl":
        out = {k: v for k, v in sd.items() if k == "shared.weight" or k.startswith("encoder.")}
        out["encoder.embed_tokens.weight"] = out["shared.weight"]     # tied in the HF module
        return out
    # Qwen files: "model.layers..." -> "layers..."; lm_head and visual.* are not part of the text path
    return {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}


def hf_config(kind: str, sd: dict[str, torch.Tensor]):
    import transformers

    config_cls = getattr(transformers, HF_CLASSES[kind][0])
    values = _t5_config(sd) if kind == "t5xxl" else _qwen_config(kind, sd)
    return config_cls(**values)


class LanguageModel(nn.Module):
    """A transformers encoder stack run to the layer ComfyUI takes."""

    def __init__(self, kind: str, hf: nn.Module):
        super().__init__()
        self.kind = kind
        self.hf = hf

    @property
    def blocks(self) -> nn.ModuleList:
        return self.hf.encoder.block if self.kind == "t5xxl" else self.hf.layers

    @property
    def final_norm(self) -> nn.Module:
        return self.hf.encoder.final_layer_norm if self.kind == "t5xxl" else self.hf.norm

    @property
    def width(self) -> int:
        return self.input_embeddings.weight.shape[1]

    @property
    def input_embeddings(self) -> nn.Embedding:
        return self.hf.shared if self.kind == "t5xxl" else self.hf.embed_tokens

    def embed(self, ids: torch.Tensor, overrides: dict[tuple[int, int], torch.Tensor]) -> torch.Tensor:
        """(N, T) ids -> (N, T, D); textual-inversion vectors replace the embeddings at their positions."""
        x = self.input_embeddings(ids)
        if overrides:
            x = x.clone()
            for (row, col), vec in overrides.items():
                x[row, col] = vec.to(device=x.device, dtype=x.dtype)
        return x

    def forward(self, embeds: torch.Tensor, layer: int | None = None, norm_hidden: bool = False,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (N, T, D): the last layer (normed) when `layer` is None, else block `layer`'s output."""
        n = len(self.blocks)
        captured: list[torch.Tensor] = []
        handle = None
        if layer is not None:
            if not -n <= layer < n:
                raise ModelError(f"layer {layer} out of range for a {n}-layer text encoder", where="CLIPSetLastLayer",
                                 fix=f"use a value between -{n} and -1")

            def keep(_module, _args, output):
                captured.append(output[0] if isinstance(output, tuple) else output)

            handle = self.blocks[layer % n].register_forward_hook(keep)
        try:
            if self.kind == "t5xxl":
                # Flux runs T5 over its pad tokens: ComfyUI passes no attention mask
                last = self.hf(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            else:
                last = self.hf(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
        finally:
            if handle is not None:
                handle.remove()
        if layer is None:
            return last
        hidden = captured[0]
        return self.final_norm(hidden) if norm_hidden else hidden


def weight_dtype(kind: str, dtype: torch.dtype) -> torch.dtype:
    """Qwen's activations overflow fp16; where the GPU has bf16 the Qwen encoders use it instead (as
    ComfyUI runs them in their files' bf16). T5 stays fp16: transformers clamps its fp16 activations."""
    if kind != "t5xxl" and dtype == torch.float16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return dtype


def build_language_model(kind: str, sd: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype,
                         where: str) -> LanguageModel:
    """A `LanguageModel` of `kind` ("t5xxl", "qwen3", "qwen25") with the weights of `sd` (ComfyUI keys)."""
    import transformers

    dtype = weight_dtype(kind, dtype)
    converted = convert_state_dict(kind, sd)
    try:
        config = hf_config(kind, converted)
    except KeyError as exc:
        raise ModelError(f"text encoder key {exc} missing", where=where,
                         fix="the file is incomplete or not a supported text encoder") from exc
    model_cls = getattr(transformers, HF_CLASSES[kind][1])
    with torch.device("meta"):
        hf = model_cls(config)
    missing, unexpected = hf.load_state_dict(converted, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(f"weights do not fit the {kind} model built from their shapes: missing {list(missing)[:4]}, "
                         f"unexpected {list(unexpected)[:4]}", where=where, fix="unsupported text encoder variant")
    rotary = None
    if kind != "t5xxl":
        # rotary frequencies are computed float32 buffers, not weights: they were built on meta, and a
        # cast to fp16 would round them, so they are made again on the device after the cast
        rotary = type(hf.rotary_emb)
        hf.rotary_emb = None
    model = LanguageModel(kind, hf)
    if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):
        raise ModelError("some text encoder weights were not loaded", where=where)
    model = nn.Module.to(model, device=device, dtype=dtype)
    if rotary is not None:
        hf.rotary_emb = rotary(config=hf.config).to(device)
    return model.eval().requires_grad_(False)
