"""What text encoder a file holds, from its key names (safetensors header only), and where.

Files come in ComfyUI's layouts: `clip_l.safetensors` (HF CLIPTextModel keys `text_model.*`),
`t5xxl_fp16.safetensors` (`shared.weight`, `encoder.block.N.layer...`), `qwen_3_4b.safetensors`
and `qwen_2.5_vl_7b.safetensors` (`model.layers.N...`, `model.embed_tokens.weight`,
`model.norm.weight`; the VL file also holds `visual.*`, which the text path ignores). All-in-one
checkpoints carry the same keys under a prefix (`text_encoders.t5xxl.transformer.`), so each
kind is found by a key suffix and its prefix is whatever precedes it.

Detection looks at structure, not widths, so tiny test files are recognised like real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

KINDS = {
    "clip_l": "CLIP-L", "clip_g": "CLIP-G", "clip_h": "CLIP-H", "t5xxl": "T5-XXL", "umt5": "UMT5",
    "qwen3": "Qwen3 (Qwen3-4B)", "qwen25": "Qwen2.5 (Qwen2.5-VL-7B)", "gemma": "Gemma", "llama": "Llama",
}
CLIP_WIDTH_KINDS = {1280: "clip_g", 1024: "clip_h"}   # other widths (768, tiny) are CLIP-L


@dataclass(frozen=True)
class Found:
    """One text encoder inside a file: its kind (a `KINDS` key) and the key prefix it lives under."""

    kind: str
    prefix: str

    @property
    def label(self) -> str:
        return KINDS[self.kind]


def _prefixes(keys: set[str], suffix: str) -> list[str]:
    return sorted(k[: -len(suffix)] for k in keys if k.endswith(suffix))


def find_encoders(shapes: dict[str, tuple]) -> list[Found]:
    """Every text encoder in a key -> shape table, in a stable order."""
    keys = set(shapes)
    found: list[Found] = []
    for p in _prefixes(keys, "text_model.final_layer_norm.weight"):
        width = shapes[p + "text_model.final_layer_norm.weight"][0]
        found.append(Found(CLIP_WIDTH_KINDS.get(width, "clip_l"), p))
    for p in _prefixes(keys, "encoder.final_layer_norm.weight"):
        if p + "encoder.block.0.layer.0.SelfAttention.q.weight" not in keys:
            continue
        # UMT5 keeps a relative position bias in every block, T5 only in the first
        umt5 = p + "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in keys
        found.append(Found("umt5" if umt5 else "t5xxl", p))
    for p in _prefixes(keys, "model.layers.0.self_attn.q_proj.weight"):
        m = p + "model."
        if m + "norm.weight" not in keys or m + "embed_tokens.weight" not in keys:
            continue
        if m + "layers.0.pre_feedforward_layernorm.weight" in keys:
            kind = "gemma"
        elif m + "layers.0.self_attn.q_norm.weight" in keys:
            kind = "qwen3"
        elif m + "layers.0.self_attn.q_proj.bias" in keys:
            kind = "qwen25"
        else:
            kind = "llama"
        found.append(Found(kind, p))
    return found


def describe(found: Iterable[Found]) -> str:
    labels = [f.label for f in found]
    return ", ".join(labels) if labels else "no text encoder"
