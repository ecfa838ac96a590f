"""LoRAs on Z-Image and Qwen-Image in the kohya, diffusers/PEFT and ComfyUI key formats (tiny files)."""

import pytest
import torch
from safetensors.torch import save_file

from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import build_component

WIDTH, RANK = 64, 2


@pytest.fixture(scope="module")
def files(tiny_model_files):
    return tiny_model_files["dit"]


def _pair(name, down_suffix, up_suffix, down, up):
    return {name + down_suffix: down.clone(), name + up_suffix: up.clone()}


def _factors(seed, outs):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(RANK, WIDTH, generator=g) * 0.3, [torch.randn(n, RANK, generator=g) * 0.3 for n in outs]


def _output(path, family, shape, lora=None, strength=1.0):
    handle = ModelHandle(str(path), "unet", family)
    if lora is not None:
        handle = handle.with_lora(str(lora), strength)
    model = build_component(handle, "cpu")
    g = torch.Generator().manual_seed(3)
    x, ctx = torch.randn(shape, generator=g), torch.randn((1, 9, 64), generator=g)
    with torch.inference_mode():
        return model(x, torch.tensor([0.7]), ctx)


def _save(tmp_path, name, sd):
    path = tmp_path / f"{name}.safetensors"
    save_file(sd, str(path))
    return path


def test_zimage_diffusers_split_qkv_equals_kohya_on_the_fused_qkv(files, tmp_path):
    down, ups = _factors(1, [WIDTH] * 3)
    peft = {}
    for n, up in zip("qkv", ups):
        peft.update(_pair(f"transformer.layers.0.attention.to_{n}", ".lora_A.weight", ".lora_B.weight", down, up))
    kohya = _pair("lora_unet_layers_0_attention_qkv", ".lora_down.weight", ".lora_up.weight", down, torch.cat(ups))
    shape = (1, 16, 8, 8)
    base = _output(files["zimage"], "zimage", shape)
    a = _output(files["zimage"], "zimage", shape, _save(tmp_path, "peft", peft), 0.8)
    b = _output(files["zimage"], "zimage", shape, _save(tmp_path, "kohya", kohya), 0.8)
    assert (a - base).abs().max() > 1e-3
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_zimage_diffusers_names_in_comfyui_and_kohya_spelling_reach_the_same_layers(files, tmp_path):
    down, (up,) = _factors(2, [WIDTH])
    ours = _pair("diffusion_model.noise_refiner.1.attention.out", ".lora_A.weight", ".lora_B.weight", down, up)
    theirs = _pair("lora_unet_noise_refiner_1_attention_to_out_0", ".lora_down.weight", ".lora_up.weight", down, up)
    theirs["lora_unet_noise_refiner_1_attention_to_out_0.alpha"] = torch.tensor(float(RANK))
    embed_down = torch.randn(RANK, 64) * 0.3
    for sd, name in ((ours, "diffusion_model.x_embedder"), (theirs, "diffusion_model.all_x_embedder.2-1")):
        sd.update(_pair(name, ".lora_A.weight", ".lora_B.weight", embed_down, up))
    shape = (1, 16, 8, 8)
    base = _output(files["zimage"], "zimage", shape)
    a = _output(files["zimage"], "zimage", shape, _save(tmp_path, "comfy", ours))
    b = _output(files["zimage"], "zimage", shape, _save(tmp_path, "kohya", theirs))
    assert (a - base).abs().max() > 1e-3
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name,down_suffix,up_suffix", [
    ("lora_unet_transformer_blocks_0_attn_add_k_proj", ".lora_down.weight", ".lora_up.weight"),     # kohya
    ("transformer.transformer_blocks.0.attn.add_k_proj", ".lora_A.weight", ".lora_B.weight"),       # diffusers/PEFT
    ("diffusion_model.transformer_blocks.0.attn.add_k_proj", ".lora_A.weight", ".lora_B.weight"),   # ComfyUI
    ("lycoris_transformer_blocks_0_attn_add_k_proj", ".lora_down.weight", ".lora_up.weight"),       # LyCORIS
])
def test_qwen_image_lora_formats_patch_the_same_layer(files, tmp_path, name, down_suffix, up_suffix):
    down, (up,) = _factors(4, [WIDTH])
    shape = (1, 16, 1, 8, 8)
    base = _output(files["qwenimage"], "qwenimage", shape)
    reference = _pair("transformer_blocks.0.attn.add_k_proj", ".lora_A.weight", ".lora_B.weight", down, up)
    expected = _output(files["qwenimage"], "qwenimage", shape, _save(tmp_path, "plain", reference), 0.7)
    got = _output(files["qwenimage"], "qwenimage", shape,
                  _save(tmp_path, "fmt", _pair(name, down_suffix, up_suffix, down, up)), 0.7)
    assert (got - base).abs().max() > 1e-3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.equal(_output(files["qwenimage"], "qwenimage", shape, _save(tmp_path, "zero", reference), 0.0), base)
