"""Text encoders on tiny random files: the layer each family takes, padding and masks, template rows,
prompt weighting, checked against transformers' own forward passes and the CLIP model."""

from __future__ import annotations

import pytest
import torch

from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import build_component
from diffmesh.models.text import tokenizers as tk

P1, P2 = "a photo of a cat", "(red:1.2) fox, 8k"


@pytest.fixture(scope="module")
def flux(te_files, store):
    handle = ModelHandle(te_files["t5xxl"], "clip", "flux", extra_paths=(te_files["clip_l"],))
    return build_component(handle, "cpu", None, store)


@pytest.fixture(scope="module")
def zimage(te_files, store):
    return build_component(ModelHandle(te_files["qwen3_4b"], "clip", "lumina2"), "cpu", None, store)


@pytest.fixture(scope="module")
def qwen_image(te_files, store):
    return build_component(ModelHandle(te_files["qwen25_7b"], "clip", "qwen_image"), "cpu", None, store)


def _hf_hidden(encoder_model, ids, mask=None):
    """transformers' own forward with all hidden states: (last_hidden_state, hidden_states)."""
    with torch.no_grad():
        out = encoder_model.hf(input_ids=torch.tensor([ids]), attention_mask=mask, output_hidden_states=True)
    return out.last_hidden_state[0], out.hidden_states


# -- Flux: T5-XXL sequence + CLIP-L pooled ---------------------------------------------------------

def test_flux_conditioning_is_t5_last_layer_over_the_padded_row_and_clip_pooled(flux):
    [[cond, options]] = flux.encode(P1)
    ids = tk.token_ids(flux.t5_row(P1))
    last, _ = _hf_hidden(flux.t5, ids)          # no attention mask: T5 attends its pad tokens
    assert cond.shape == (1, 256, flux.t5.width) and set(options) == {"pooled_output"}
    torch.testing.assert_close(cond[0], last, rtol=0, atol=1e-6)
    masked, _ = _hf_hidden(flux.t5, ids, tk.attention_mask(ids, tk.T5XXL_RULES))
    assert not torch.allclose(cond[0], masked, atol=1e-4)   # a mask would change the output


def test_flux_pooled_is_clip_l_final_layer_at_the_first_end_token_unprojected(flux):
    [[_cond, options]] = flux.encode(P1)
    chunk = flux.clip_chunks(P1)[0]
    ids = torch.tensor([[t for t, _w in chunk]])
    with torch.no_grad():
        hidden, pooled = flux.clip_l(ids, layer=-1)
    eos = [t for t, _w in chunk].index(49407)
    assert options["pooled_output"].shape == (1, flux.clip_l.config.hidden)
    torch.testing.assert_close(options["pooled_output"][0], hidden[0, eos], rtol=0, atol=1e-6)
    assert flux.clip_l.text_projection is None          # clip_l.safetensors' projection is not applied


def test_flux_long_prompts_are_not_truncated(flux):
    words = " ".join(["word"] * 300)
    [[cond, _]] = flux.encode(words)
    assert cond.shape[1] == len(flux.t5_row(words)) > 300


def test_flux_prompt_weight_moves_only_the_weighted_t5_rows_from_the_empty_prompt(flux):
    [[weighted, w_opts]] = flux.encode(P2)
    [[plain, p_opts]] = flux.encode("(red:1.0) fox, 8k")      # same pieces, same ids, weight 1
    row = flux.t5_row(P2)
    assert [w for _t, w in row][:2] == [1.2, 1.0]
    empty = [1] + [0] * (len(row) - 1)
    z_empty, _ = _hf_hidden(flux.t5, empty)
    torch.testing.assert_close(weighted[0, 1:], plain[0, 1:], rtol=0, atol=0)
    expected = z_empty[0] + (plain[0, 0] - z_empty[0]) * 1.2
    torch.testing.assert_close(weighted[0, 0], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(weighted[0, 0], plain[0, 0])
    # CLIP-L's pooled vector comes from the unweighted first chunk: weights never change it
    torch.testing.assert_close(w_opts["pooled_output"], p_opts["pooled_output"], rtol=0, atol=0)


def test_flux_separate_texts_for_clip_l_and_t5(flux):
    [[cond, options]] = flux.encode({"clip_l": "a dog", "t5xxl": P1})
    [[cond_p1, opts_p1]] = flux.encode(P1)
    [[_c, opts_dog]] = flux.encode("a dog")
    torch.testing.assert_close(cond, cond_p1, rtol=0, atol=0)
    torch.testing.assert_close(options["pooled_output"], opts_dog["pooled_output"], rtol=0, atol=0)
    assert not torch.allclose(opts_p1["pooled_output"], opts_dog["pooled_output"])


def test_clip_set_last_layer_reaches_t5_with_the_final_norm(te_files, store):
    handle = ModelHandle(te_files["t5xxl"], "clip", "flux", extra_paths=(te_files["clip_l"],), clip_skip=-2)
    encoder = build_component(handle, "cpu", None, store)
    [[cond, _]] = encoder.encode(P1)
    _last, hidden = _hf_hidden(encoder.t5, tk.token_ids(encoder.t5_row(P1)))
    n = len(encoder.t5.blocks)
    torch.testing.assert_close(cond[0], encoder.t5.final_norm(hidden[n - 1][0]), rtol=0, atol=1e-6)


# -- Z-Image: Qwen3-4B, hidden layer -2 -------------------------------------------------------------

def test_zimage_takes_the_second_to_last_layer_without_final_norm(zimage):
    [[cond, options]] = zimage.encode(P1)
    ids = tk.token_ids(zimage.row(P1))
    last, hidden = _hf_hidden(zimage.model, ids)
    assert cond.shape == (1, 13, zimage.model.width)
    torch.testing.assert_close(cond[0], hidden[-2][0], rtol=0, atol=1e-6)
    assert not torch.allclose(cond[0], last, atol=1e-3)
    assert options["pooled_output"] is None
    assert torch.equal(options["attention_mask"], torch.ones(1, 13, dtype=torch.long))


def test_zimage_has_no_padding_and_keeps_weight_syntax_literal(zimage):
    [[weighted, _]] = zimage.encode(P2)
    ids = tk.token_ids(zimage.row(P2))
    assert weighted.shape[1] == len(ids) == 19
    _last, hidden = _hf_hidden(zimage.model, ids)
    torch.testing.assert_close(weighted[0], hidden[-2][0], rtol=0, atol=1e-6)


def test_zimage_mask_stops_at_a_pad_token_in_the_prompt_and_reaches_the_model(zimage):
    text = "a cat<|endoftext|> and more"
    [[cond, options]] = zimage.encode(text)
    ids = tk.token_ids(zimage.row(text))
    mask = tk.attention_mask(ids, tk.ZIMAGE_RULES)
    assert torch.equal(options["attention_mask"], mask) and int(mask.sum()) < len(ids)
    _l, hidden = _hf_hidden(zimage.model, ids, mask)
    stop = int(mask.sum())
    torch.testing.assert_close(cond[0, :stop], hidden[-2][0, :stop], rtol=0, atol=1e-6)


def test_clip_set_last_layer_on_lumina2_takes_that_block_unnormed(te_files, store):
    handle = ModelHandle(te_files["qwen3_4b"], "clip", "lumina2", clip_skip=-1)
    encoder = build_component(handle, "cpu", None, store)
    [[cond, _]] = encoder.encode(P1)
    last, _hidden = _hf_hidden(encoder.model, tk.token_ids(encoder.row(P1)))
    # the last block's own output: before the final norm that transformers' last_hidden_state applies
    torch.testing.assert_close(cond[0], _block_output(encoder, P1, -1), rtol=0, atol=1e-6)
    assert not torch.allclose(cond[0], last, atol=1e-3)


def _block_output(encoder, text, index):
    captured = []
    hook = encoder.model.blocks[index].register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        _hf_hidden(encoder.model, tk.token_ids(encoder.row(text)))
    finally:
        hook.remove()
    return captured[0][0]


# -- Qwen-Image: Qwen2.5-VL-7B language model, template rows dropped ---------------------------------

def test_qwen_image_drops_the_template_rows_and_takes_the_last_layer(qwen_image):
    [[cond, options]] = qwen_image.encode(P1)
    ids = tk.token_ids(qwen_image.row(P1))
    last, hidden = _hf_hidden(qwen_image.model, ids)
    assert len(ids) == 44 and cond.shape == (1, 10, qwen_image.model.width)
    torch.testing.assert_close(cond[0], last[34:], rtol=0, atol=1e-6)
    assert not torch.allclose(cond[0], hidden[-2][0, 34:], atol=1e-3)
    assert options == {"pooled_output": None}      # an all-ones mask is dropped, as ComfyUI does


def test_qwen_image_ignores_the_vision_tower(te_files, store):
    keys = store.state_dict(te_files["qwen25_7b"]).keys()
    assert any(k.startswith("visual.") for k in keys)
    encoder = build_component(ModelHandle(te_files["qwen25_7b"], "clip", "qwen_image"), "cpu", None, store)
    assert not any("visual" in name for name, _ in encoder.named_parameters())


def test_stable_diffusion_clip_l_file_encodes_like_sd1(te_files, store):
    encoder = build_component(ModelHandle(te_files["clip_l"], "clip", "stable_diffusion"), "cpu", None, store)
    [[cond, options]] = encoder.encode(P1)
    assert cond.shape == (1, 77, 32) and options["pooled_output"].shape == (1, 32)


@pytest.mark.parametrize("family, parts", [
    ("flux", {"clip_l": "text_encoders.clip_l.transformer.", "t5xxl": "text_encoders.t5xxl.transformer."}),
    ("zimage", {"qwen3_4b": "text_encoders.qwen3_4b.transformer."}),
    ("qwenimage", {"qwen25_7b": "text_encoders.qwen25_7b.transformer."}),
])
def test_all_in_one_checkpoints_find_their_text_encoders_under_comfyuis_prefixes(te_files, store, tmp_path,
                                                                                family, parts):
    from safetensors.torch import load_file, save_file

    combined = {"model.diffusion_model.img_in.weight": torch.zeros(2, 2)}       # the rest of a checkpoint
    for name, prefix in parts.items():
        combined.update({prefix + k: v for k, v in load_file(te_files[name]).items()})
    path = tmp_path / f"{family}-aio.safetensors"
    save_file(combined, str(path))
    separate = {"flux": ModelHandle(te_files["t5xxl"], "clip", "flux", extra_paths=(te_files["clip_l"],)),
                "zimage": ModelHandle(te_files["qwen3_4b"], "clip", "lumina2"),
                "qwenimage": ModelHandle(te_files["qwen25_7b"], "clip", "qwen_image")}[family]
    [[cond, options]] = build_component(ModelHandle(str(path), "clip", family), "cpu", None, store).encode(P1)
    [[expected, expected_options]] = build_component(separate, "cpu", None, store).encode(P1)
    torch.testing.assert_close(cond, expected, rtol=0, atol=0)
    assert options.keys() == expected_options.keys()


def test_scaled_fp8_t5_files_load_with_their_per_tensor_scales(te_files, store, tmp_path):
    from safetensors.torch import load_file, save_file

    plain = load_file(te_files["t5xxl"])
    scaled, dequantized = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}, {}
    for key, value in plain.items():
        if key.endswith(".weight") and value.ndim == 2 and "relative_attention_bias" not in key and key != "shared.weight":
            scale = value.abs().max() / 448.0
            q = (value / scale).to(torch.float8_e4m3fn)
            scaled[key], scaled[key[:-len("weight")] + "scale_weight"] = q, scale.reshape(())
            scaled[key[:-len("weight")] + "scale_input"] = torch.ones(())
            dequantized[key] = q.float() * scale
        else:
            scaled[key] = dequantized[key] = value
    save_file(scaled, str(tmp_path / "t5_scaled.safetensors"))
    save_file(dequantized, str(tmp_path / "t5_dequantized.safetensors"))

    def encode(path):
        handle = ModelHandle(str(path), "clip", "flux", extra_paths=(te_files["clip_l"],))
        return build_component(handle, "cpu", None, store).encode(P1)[0][0]

    got, want = encode(tmp_path / "t5_scaled.safetensors"), encode(tmp_path / "t5_dequantized.safetensors")
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    exact = encode(te_files["t5xxl"])
    assert 0 < float((got - exact).norm() / exact.norm()) < 0.1      # fp8 rounding, not a wrong scale


def test_a_kohya_lora_patches_flux_clip_l_at_its_strength(te_files, store, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(5)
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    up, down = torch.randn(32, 4, generator=g), torch.randn(4, 32, generator=g)
    save_file({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down, f"{name}.alpha": torch.tensor(2.0)},
              str(tmp_path / "lora.safetensors"))
    base = ModelHandle(te_files["t5xxl"], "clip", "flux", extra_paths=(te_files["clip_l"],))
    plain = build_component(base, "cpu", None, store)
    patched = build_component(base.with_lora(str(tmp_path / "lora.safetensors"), 0.5), "cpu", None, store)
    weight = plain.clip_l.encoder.layers[0].self_attn.q_proj.weight
    expected = weight + 0.5 * (up @ down) * (2.0 / 4)
    torch.testing.assert_close(patched.clip_l.encoder.layers[0].self_attn.q_proj.weight, expected,
                               rtol=0, atol=1e-6)
    assert not torch.equal(patched.encode(P1)[0][1]["pooled_output"], plain.encode(P1)[0][1]["pooled_output"])


def test_a_lora_naming_t5_layers_patches_them(te_files, store, tmp_path):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(6)
    name = "lora_te2_encoder_block_1_layer_1_DenseReluDense_wo"
    up, down = torch.randn(64, 4, generator=g), torch.randn(4, 128, generator=g)
    save_file({f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down}, str(tmp_path / "t5lora.safetensors"))
    base = ModelHandle(te_files["t5xxl"], "clip", "flux", extra_paths=(te_files["clip_l"],))
    plain = build_component(base, "cpu", None, store)
    patched = build_component(base.with_lora(str(tmp_path / "t5lora.safetensors"), 1.0), "cpu", None, store)
    wo = lambda enc: enc.t5.hf.encoder.block[1].layer[1].DenseReluDense.wo.weight  # noqa: E731
    torch.testing.assert_close(wo(patched), wo(plain) + up @ down, rtol=0, atol=1e-5)
    assert not torch.equal(patched.encode(P1)[0][0], plain.encode(P1)[0][0])
