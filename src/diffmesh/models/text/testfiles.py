"""Random-weight text-encoder files in ComfyUI's key layouts, for tests (`diffmesh make-test-model`).

`clip_l` (`text_model.*` + `text_projection.weight`, like ComfyUI's clip_l.safetensors), `t5xxl`
(`shared.weight`, `encoder.block.N.layer...`), `qwen3_4b` (`model.layers.N...` with q/k norms) and
`qwen25_7b` (`model.layers.N...` with q/k/v biases, plus a few `visual.*` tensors the text path
must ignore). "tiny" keeps the real vocabularies (so real prompts tokenize) and shrinks widths and
depths; "full" writes the real shapes (gigabytes: only for benchmarks).
"""

from __future__ import annotations

import os

import torch

from diffmesh.errors import ModelError
from diffmesh.models import testspecs as ts

# Widths match what the tiny DiTs read (models.dit.testfiles, models.testmodels_dit): Flux context 64
# (T5) and pooled 32 (CLIP-L), Z-Image caption 64 (Qwen3), Qwen-Image joint 64 (Qwen2.5)
TINY = {
    "clip_l": dict(hidden=32, layers=2, inter=64),
    "t5xxl": dict(vocab=32128, d_model=64, d_kv=16, heads=4, d_ff=128, layers=2),
    "qwen3_4b": dict(vocab=151936, hidden=64, heads=4, kv_heads=2, head_dim=16, inter=128, layers=3),
    "qwen25_7b": dict(vocab=152064, hidden=64, heads=1, kv_heads=1, head_dim=128, inter=128, layers=3),
    # UMT5 (Wan, width 64 = the tiny Wan's text_dim); its vocabulary is the tiny SentencePiece model below
    "umt5xxl": dict(vocab=256, d_model=64, d_kv=16, heads=4, d_ff=128, layers=2),
}
FULL = {
    "clip_l": dict(hidden=768, layers=12, inter=3072),
    "t5xxl": dict(vocab=32128, d_model=4096, d_kv=64, heads=64, d_ff=10240, layers=24),
    "qwen3_4b": dict(vocab=151936, hidden=2560, heads=32, kv_heads=8, head_dim=128, inter=9728, layers=36),
    "qwen25_7b": dict(vocab=152064, hidden=3584, heads=28, kv_heads=4, head_dim=128, inter=18944, layers=28),
    "umt5xxl": dict(vocab=256384, d_model=4096, d_kv=64, heads=64, d_ff=10240, layers=24),
}
# Sentences the tiny UMT5 vocabulary is trained on (any other text still tokenizes: unknown pieces -> <unk>)
SPIECE_CORPUS = (
    "a photo of a cat", "a red fox in the snow, 8k", "an old harbor town at the golden hour",
    "the quick brown fox jumps over the lazy dog", "a cinematic shot of a dragon flying over mountains",
    "a bowl of fruit on a wooden table", "a portrait of a woman with long hair", "a city street at night with neon",
    "low quality, blurry, static, overexposed, worst quality, jpeg artifacts", "waves crash on the rocks",
)
FAMILIES = tuple(TINY)


def _rms(s: ts.Spec, name: str, c: int) -> None:
    s.items[name + ".weight"] = ((c,), "norm_w", None)


def clip_l_spec(hidden: int, layers: int, inter: int) -> ts.Spec:
    s = ts.Spec()
    ts.clip_spec(s, "", hidden=hidden, layers=layers, inter=inter)
    s.linear("text_projection", hidden, hidden, bias=False)
    return s


def t5_spec(vocab: int, d_model: int, d_kv: int, heads: int, d_ff: int, layers: int, umt5: bool = False) -> ts.Spec:
    """T5 keeps its relative position bias in block 0 only; UMT5 (`umt5`) in every block."""
    s = ts.Spec()
    s.emb("shared", vocab, d_model)
    inner = heads * d_kv
    for i in range(layers):
        b = f"encoder.block.{i}.layer"
        for n in ("q", "k", "v"):
            s.linear(f"{b}.0.SelfAttention.{n}", inner, d_model, bias=False)
        s.linear(f"{b}.0.SelfAttention.o", d_model, inner, bias=False)
        if i == 0 or umt5:
            s.emb(f"{b}.0.SelfAttention.relative_attention_bias", 32, heads)
        _rms(s, f"{b}.0.layer_norm", d_model)
        s.linear(f"{b}.1.DenseReluDense.wi_0", d_ff, d_model, bias=False)
        s.linear(f"{b}.1.DenseReluDense.wi_1", d_ff, d_model, bias=False)
        s.linear(f"{b}.1.DenseReluDense.wo", d_model, d_ff, bias=False)
        _rms(s, f"{b}.1.layer_norm", d_model)
    _rms(s, "encoder.final_layer_norm", d_model)
    return s


def qwen_spec(vocab: int, hidden: int, heads: int, kv_heads: int, head_dim: int, inter: int, layers: int,
              qk_norm: bool, qkv_bias: bool) -> ts.Spec:
    s = ts.Spec()
    s.emb("model.embed_tokens", vocab, hidden)
    for i in range(layers):
        a = f"model.layers.{i}"
        s.linear(f"{a}.self_attn.q_proj", heads * head_dim, hidden, bias=qkv_bias)
        s.linear(f"{a}.self_attn.k_proj", kv_heads * head_dim, hidden, bias=qkv_bias)
        s.linear(f"{a}.self_attn.v_proj", kv_heads * head_dim, hidden, bias=qkv_bias)
        s.linear(f"{a}.self_attn.o_proj", hidden, heads * head_dim, bias=False)
        if qk_norm:
            _rms(s, f"{a}.self_attn.q_norm", head_dim)
            _rms(s, f"{a}.self_attn.k_norm", head_dim)
        s.linear(f"{a}.mlp.gate_proj", inter, hidden, bias=False)
        s.linear(f"{a}.mlp.up_proj", inter, hidden, bias=False)
        s.linear(f"{a}.mlp.down_proj", hidden, inter, bias=False)
        _rms(s, f"{a}.input_layernorm", hidden)
        _rms(s, f"{a}.post_attention_layernorm", hidden)
    _rms(s, "model.norm", hidden)
    return s


def text_encoder_state_dict(family: str, size: str = "tiny", seed: int = 0,
                            dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    table = {"tiny": TINY, "full": FULL}.get(size)
    if table is None or family not in table:
        raise ModelError(f"no test text encoder {family!r} of size {size!r}", where="make_test_model",
                         fix=f"family one of {list(FAMILIES)}, size tiny or full")
    dims = table[family]
    if family == "clip_l":
        spec = clip_l_spec(**dims)
    elif family in ("t5xxl", "umt5xxl"):
        spec = t5_spec(**dims, umt5=family == "umt5xxl")
    else:
        spec = qwen_spec(**dims, qk_norm=family == "qwen3_4b", qkv_bias=family == "qwen25_7b")
    if family == "qwen25_7b":
        # a stand-in for the vision tower ComfyUI's file carries; the text path must skip it
        spec.linear("visual.patch_embed.proj", 16, 12, bias=False)
        spec.linear("visual.merger.mlp.0", 16, 16)
    sd = ts.materialize(spec, seed, dtype)
    if family == "umt5xxl":               # ComfyUI's UMT5 files carry their SentencePiece model
        sd["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    return sd


def tiny_spiece_model() -> bytes:
    """A small SentencePiece unigram model (pad 0, end 1, unk 2, no start token: UMT5's ids), trained
    in-process on SPIECE_CORPUS; one thread, so the bytes are the same on every run."""
    import io

    import sentencepiece

    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SPIECE_CORPUS * 3), model_writer=proto, vocab_size=200, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, character_coverage=1.0, hard_vocab_limit=False,
        minloglevel=2)
    return proto.getvalue()


def make_text_encoder(family: str, size: str, out_path: str | os.PathLike, seed: int = 0) -> str:
    """Write one random text-encoder file (fp32 tiny, fp16 full)."""
    dtype = torch.float16 if size == "full" else torch.float32
    sd = text_encoder_state_dict(family, size, seed, dtype)
    meta = {"format": "pt", "generator": "diffmesh.models.text.testfiles", "family": family, "size": size,
            "seed": str(seed), "note": "random weights, NOT a trained model"}
    ts.save_safetensors_deterministic(sd, str(out_path), meta)
    return str(out_path)
