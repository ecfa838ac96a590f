"""Token ids, weights and masks equal ComfyUI's recorded `tokens_*`, `token_weights_*`, `token_mask_*`
(shared/reference DiT folders) for prompts p1, p2 (weighted) and p3 (313 words)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from diffmesh.models import tokenizer as clip_tk
from diffmesh.models.prompt_weights import parse_prompt_weights
from diffmesh.models.text import tokenizers as tk

PROMPTS = ("p1", "p2", "p3")
CLIP_RULES = tk.TokenRules(end=clip_tk.END_TOKEN, pad=clip_tk.END_TOKEN, min_length=77)


def _components(reference_dir, folder):
    with safe_open(str(reference_dir / folder / "components.safetensors"), "pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
        return prompts, {k: f.get_tensor(k) for k in f.keys() if k.startswith("token")}


@pytest.fixture(scope="module")
def flux(reference_dir):
    return _components(reference_dir, "flux_256_euler")


@pytest.fixture(scope="module")
def zimage(reference_dir):
    return _components(reference_dir, "zimage_256_euler")


@pytest.fixture(scope="module")
def qwenimage(reference_dir):
    return _components(reference_dir, "qwenimage_256_euler")


@pytest.fixture(scope="module")
def t5():
    return tk.t5_tokenizer()


@pytest.fixture(scope="module")
def qwen():
    return tk.qwen_tokenizer()


def _check(rows, stored, key, rules):
    """rows: list of token rows [(id, weight)]; compares ids, weights (all 1 when not stored) and masks."""
    ids = torch.tensor([tk.token_ids(r) for r in rows])
    weights = torch.tensor([[w for _t, w in r] for r in rows], dtype=torch.float32)
    mask = torch.cat([tk.attention_mask(tk.token_ids(r), rules) for r in rows])
    assert torch.equal(ids, stored[f"tokens_{key}"])
    expected_weights = stored.get(f"token_weights_{key}", torch.ones_like(weights))
    assert torch.equal(weights, expected_weights)
    assert torch.equal(mask, stored[f"token_mask_{key}"])


@pytest.mark.parametrize("p", PROMPTS)
def test_t5xxl_tokens_weights_and_mask_match_comfyui(flux, t5, p):
    prompts, stored = flux
    _check([tk.tokenize(t5, prompts[p], tk.T5XXL_RULES)], stored, f"flux_t5xxl_{p}", tk.T5XXL_RULES)


@pytest.mark.parametrize("p", PROMPTS)
def test_flux_clip_l_chunks_match_comfyui(flux, p):
    prompts, stored = flux
    chunks = clip_tk.chunk_tokens(clip_tk.token_groups(clip_tk.CLIPTokenizer(), parse_prompt_weights(prompts[p])),
                                  clip_tk.END_TOKEN)
    _check(chunks, stored, f"flux_clip_l_{p}", CLIP_RULES)


@pytest.mark.parametrize("p", PROMPTS)
def test_zimage_qwen3_tokens_match_comfyui(zimage, qwen, p):
    prompts, stored = zimage
    _check([tk.tokenize(qwen, prompts[p], tk.ZIMAGE_RULES)], stored, f"zimage_qwen3_{p}", tk.ZIMAGE_RULES)


@pytest.mark.parametrize("p", PROMPTS)
def test_qwen_image_tokens_match_comfyui(qwenimage, qwen, p):
    prompts, stored = qwenimage
    _check([tk.tokenize(qwen, prompts[p], tk.QWEN_IMAGE_RULES)], stored, f"qwenimage_qwen25_{p}",
           tk.QWEN_IMAGE_RULES)


def test_t5_lengths_are_padded_to_256_and_never_truncated(flux):
    _prompts, stored = flux
    assert stored["tokens_flux_t5xxl_p1"].shape == (1, 256) and int(stored["token_mask_flux_t5xxl_p1"].sum()) == 8
    assert stored["tokens_flux_t5xxl_p3"].shape == (1, 458)


@pytest.mark.parametrize("p, rows, kept", [("p1", 44, 10), ("p3", 431, 397)])
def test_qwen_image_keeps_the_rows_after_the_template(qwenimage, qwen, p, rows, kept):
    prompts, _stored = qwenimage
    ids = tk.token_ids(tk.tokenize(qwen, prompts[p], tk.QWEN_IMAGE_RULES))
    assert len(ids) == rows and len(ids) - tk.qwen_image_template_end(ids) == kept


def test_weight_syntax_stays_literal_text_for_the_qwen_encoders(qwen):
    row = tk.tokenize(qwen, "(red:1.2) fox", tk.ZIMAGE_RULES)
    literal = qwen.encode(tk.ZIMAGE_TEMPLATE.format("(red:1.2) fox"))
    assert tk.token_ids(row) == literal and all(w == 1.0 for _t, w in row)


def test_qwen_mask_ends_at_the_first_pad_token(qwen):
    ids = tk.token_ids(tk.tokenize(qwen, "a cat<|endoftext|> more", tk.ZIMAGE_RULES))
    mask = tk.attention_mask(ids, tk.ZIMAGE_RULES)[0].tolist()
    stop = ids.index(tk.QWEN_PAD)
    assert mask == [1] * stop + [0] * (len(ids) - stop)


def test_qwen_image_uses_a_prompt_that_already_starts_a_chat_turn_as_it_is(qwen):
    raw = "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    ids = tk.token_ids(tk.tokenize(qwen, raw, tk.QWEN_IMAGE_RULES))
    assert ids == qwen.encode(raw)                    # no system template around it
    # rows kept from the second <|im_start|> on (here the assistant turn), as ComfyUI counts them
    assert tk.qwen_image_template_end(ids) == ids.index(tk.QWEN_IM_START, 1)
