"""LoRA in kohya and diffusers/PEFT formats, on cached base weights."""

import torch

from diffmesh.models.handle import LoraPatch, ModelHandle
from diffmesh.models.load import WeightStore, build_component


def _unet_out(unet, context):
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return unet(x, torch.tensor([400.0]), context)


def test_kohya_and_peft_loras_change_unet_and_text_encoder(tiny_model_files, store):
    ckpt = tiny_model_files["checkpoints"]["sd1"]
    base_clip = build_component(ModelHandle(ckpt, "clip", "sd1"), "cpu", None, store)
    context = base_clip.encode("a cat")[0][0]
    base_unet = _unet_out(build_component(ModelHandle(ckpt, "unet", "sd1"), "cpu", None, store), context)
    for name in ("sd1_kohya", "sd1_peft"):
        lora = (LoraPatch(tiny_model_files["loras"][name], 1.0),)
        unet = build_component(ModelHandle(ckpt, "unet", "sd1", loras=lora), "cpu", None, store)
        clip = build_component(ModelHandle(ckpt, "clip", "sd1", loras=lora), "cpu", None, store)
        assert not torch.allclose(_unet_out(unet, context), base_unet), name
        assert not torch.allclose(clip.encode("a cat")[0][0], context), name


def test_strength_zero_equals_the_base_model(tiny_model_files, store):
    ckpt = tiny_model_files["checkpoints"]["sd1"]
    context = torch.randn(1, 77, 32)
    base = _unet_out(build_component(ModelHandle(ckpt, "unet", "sd1"), "cpu", None, store), context)
    lora = (LoraPatch(tiny_model_files["loras"]["sd1_kohya"], 0.0),)
    zero = _unet_out(build_component(ModelHandle(ckpt, "unet", "sd1", loras=lora), "cpu", None, store), context)
    assert torch.equal(zero, base)


def test_changing_strength_does_not_reread_base_or_lora_file(tiny_model_files):
    store = WeightStore()
    ckpt = tiny_model_files["checkpoints"]["sd1"]
    lora_path = tiny_model_files["loras"]["sd1_kohya"]
    context = torch.randn(1, 77, 32)
    outs = []
    for strength in (0.5, 1.0, -0.7):
        handle = ModelHandle(ckpt, "unet", "sd1", loras=(LoraPatch(lora_path, strength),))
        outs.append(_unet_out(build_component(handle, "cpu", None, store), context))
    assert sum(store.reads.values()) == 2 and set(store.reads.values()) == {1}
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_strength_scales_the_patch_linearly(tiny_model_files, store):
    ckpt = tiny_model_files["checkpoints"]["sd1"]
    lora_path = tiny_model_files["loras"]["sd1_kohya"]
    weights = {}
    for s in (0.0, 1.0, 2.0):
        unet = build_component(ModelHandle(ckpt, "unet", "sd1", loras=(LoraPatch(lora_path, s),)), "cpu", None, store)
        weights[s] = unet.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.weight.clone()
    assert torch.allclose(weights[2.0] - weights[0.0], 2 * (weights[1.0] - weights[0.0]), atol=1e-5)


def test_sdxl_kohya_lora_with_ldm_module_names_patches_unet_and_both_encoders(tiny_model_files, store):
    ckpt = tiny_model_files["checkpoints"]["sdxl"]
    lora = (LoraPatch(tiny_model_files["loras"]["sdxl_kohya"], 1.0),)
    base_unet = build_component(ModelHandle(ckpt, "unet", "sdxl"), "cpu", None, store)
    unet = build_component(ModelHandle(ckpt, "unet", "sdxl", loras=lora), "cpu", None, store)
    changed = [n for (n, a), (_, b) in zip(base_unet.named_parameters(), unet.named_parameters()) if not torch.equal(a, b)]
    assert len(changed) == 3
    base_clip = build_component(ModelHandle(ckpt, "clip", "sdxl"), "cpu", None, store)
    clip = build_component(ModelHandle(ckpt, "clip", "sdxl", loras=lora), "cpu", None, store)
    base_cond, cond = base_clip.encode("a cat")[0][0], clip.encode("a cat")[0][0]
    assert not torch.allclose(cond[..., :32], base_cond[..., :32])   # CLIP-L part
    assert not torch.allclose(cond[..., 32:], base_cond[..., 32:])   # bigG part
