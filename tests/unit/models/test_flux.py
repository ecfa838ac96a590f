"""Flux.1 on tiny random files: detection, config, default sampling, guidance, fp8 storage, scaled
fp8 files, LoRA key formats, the 16-channel "ae" VAE."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffmesh.errors import ModelError
from diffmesh.models import detect
from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import build_component


@pytest.fixture(scope="module")
def files(tiny_model_files):
    return tiny_model_files["flux"]


def _unet(path, **options):
    return ModelHandle(str(path), "unet", "flux", **options)


def _inputs(batch=1, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 16, h, w), generator=g)
    context = torch.randn((batch, 12, 64), generator=g)
    pooled = torch.randn((1, 32), generator=g)
    return x, context, pooled


def _run(model, x, context, pooled, guidance=3.5, sigma=0.7):
    extra = model.extra_conds({"pooled_output": pooled, "guidance": guidance}, tuple(x.shape))
    extra = {k: v.repeat(x.shape[0], *([1] * (v.ndim - 1))) for k, v in extra.items()}
    with torch.inference_mode():
        return model(x, torch.full((x.shape[0],), sigma), context, **extra)


def test_detects_bare_and_all_in_one_flux_files(files, tmp_path):
    assert detect.detect_family(files["flux_dev"]) == "flux"
    assert detect.detect_kind(files["flux_dev"]) == "diffusion_model"
    prefixed = {"model.diffusion_model." + k: v for k, v in load_file(files["flux_dev"]).items()}
    path = tmp_path / "all-in-one.safetensors"
    save_file(prefixed, str(path))
    assert detect.detect_family(path) == "flux"
    assert detect.detect_kind(path) == "checkpoint"
    model = build_component(_unet(path), "cpu")
    reference = build_component(_unet(files["flux_dev"]), "cpu")
    x, context, pooled = _inputs()
    # same weights; the files place them at other byte offsets, which may change BLAS rounding
    assert torch.allclose(_run(model, x, context, pooled), _run(reference, x, context, pooled), rtol=0, atol=1e-5)


def test_unknown_file_error_names_the_file_and_what_was_found(tmp_path):
    path = tmp_path / "mystery.safetensors"
    save_file({"blocks.0.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError) as info:
        detect.detect_family(path)
    text = str(info.value)
    assert "mystery.safetensors" in text and "blocks" in text and "Flux" in text


def test_config_from_shapes_dev_and_schnell(files):
    dev = build_component(_unet(files["flux_dev"]), "cpu")
    schnell = build_component(_unet(files["flux_schnell"]), "cpu")
    assert dev.config["guidance_embed"] and not schnell.config["guidance_embed"]
    assert (dev.config["hidden_size"], dev.config["num_heads"], dev.config["depth"],
            dev.config["depth_single_blocks"], dev.config["context_in_dim"], dev.config["vec_in_dim"]) == \
        (256, 2, 1, 1, 64, 32)
    assert dev.family.describe(dev.config).startswith("Flux.1-dev")


def test_default_sampling_dev_is_flux_shift_schnell_is_plain_flow(files):
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.schedules import ksampler_sigmas

    dev = ksampler_sigmas(model_sampling_for(_unet(files["flux_dev"])), "simple", "euler", 4, 1.0)
    schnell = ksampler_sigmas(model_sampling_for(_unet(files["flux_schnell"])), "simple", "euler", 4, 1.0)
    # reference/flux_256_euler sigmas_default (mu 1.15); schnell: shift 1 -> t itself
    assert torch.allclose(dev, torch.tensor([1.0, 0.90453, 0.75951, 0.51284, 0.0]), atol=1e-5)
    assert torch.allclose(schnell, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), atol=1e-6)
    assert build_component(_unet(files["flux_schnell"]), "cpu").model_sampling.multiplier == 1.0


def test_guidance_changes_dev_default_is_3_5_and_schnell_ignores_it(files):
    dev = build_component(_unet(files["flux_dev"]), "cpu")
    x, context, pooled = _inputs()
    base = _run(dev, x, context, pooled, 3.5)
    assert not torch.allclose(base, _run(dev, x, context, pooled, 6.0))
    extra = dev.extra_conds({"pooled_output": pooled}, tuple(x.shape))
    assert float(extra["guidance"]) == 3.5
    schnell = build_component(_unet(files["flux_schnell"]), "cpu")
    assert torch.equal(_run(schnell, x, context, pooled, 3.5), _run(schnell, x, context, pooled, 6.0))


def test_odd_latent_sizes_pad_to_the_patch_and_crop_back(files):
    model = build_component(_unet(files["flux_dev"]), "cpu")
    x, context, pooled = _inputs(h=9, w=7)
    out = _run(model, x, context, pooled)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name,storage", [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_weight_dtype_stores_linear_weights_in_fp8_and_computes_in_fp32(files, name, storage):
    """weight_dtype fp8_*: equals a float32 model whose Linear weights were rounded to that fp8 format."""
    fp8 = build_component(_unet(files["flux_dev"], dtype=name), "cpu")
    assert fp8.net.double_blocks[0].img_attn.qkv.weight.dtype == storage
    assert fp8.net.double_blocks[0].img_attn.norm.query_norm.scale.dtype == torch.float32
    rounded = build_component(_unet(files["flux_dev"]), "cpu")
    for module in rounded.net.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = module.weight.data.to(storage).float()
    x, context, pooled = _inputs()
    assert torch.allclose(_run(fp8, x, context, pooled), _run(rounded, x, context, pooled), rtol=0, atol=1e-5)
    assert fp8.net.double_blocks[0].img_attn.qkv.weight.dtype == storage   # restored after forward


def test_scaled_fp8_file_keeps_fp8_weights_with_their_scales(files):
    scaled = build_component(_unet(files["flux_scaled_fp8"]), "cpu")
    qkv = scaled.net.double_blocks[0].img_attn.qkv
    assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.scale_weight.numel() == 1
    sd = load_file(files["flux_scaled_fp8"])
    dequant = {k: (v.float() * sd[k[:-len(".weight")] + ".scale_weight"] if v.dtype == torch.float8_e4m3fn and
                   k.endswith(".weight") else v) for k, v in sd.items()
               if not k.endswith(".scale_weight") and k != "scaled_fp8"}
    plain = build_component(_unet(files["flux_dev"]), "cpu")
    plain.net.load_state_dict(dequant)
    x, context, pooled = _inputs()
    assert torch.allclose(_run(scaled, x, context, pooled), _run(plain, x, context, pooled), rtol=0, atol=1e-5)
    # and the dequantized weights are close to the original fp32 ones (the file is a faithful fp8 copy)
    assert torch.allclose(_run(scaled, x, context, pooled),
                          _run(build_component(_unet(files["flux_dev"]), "cpu"), x, context, pooled), atol=0.1)


@pytest.mark.parametrize("fmt", ["kohya", "peft", "comfy"])
def test_each_lora_format_patches_the_model(files, fmt):
    x, context, pooled = _inputs()
    base = _run(build_component(_unet(files["flux_dev"]), "cpu"), x, context, pooled)
    patched = build_component(_unet(files["flux_dev"]).with_lora(files[f"flux_lora_{fmt}"], 0.8), "cpu")
    assert not torch.allclose(_run(patched, x, context, pooled), base, atol=1e-4)
    unpatched = build_component(_unet(files["flux_dev"]).with_lora(files[f"flux_lora_{fmt}"], 0.0), "cpu")
    assert torch.equal(_run(unpatched, x, context, pooled), base)


def test_diffusers_names_of_split_layers_patch_the_rows_of_the_fused_ones(files, tmp_path):
    """A PEFT LoRA on to_q/to_k/to_v equals a kohya LoRA on the fused qkv with the stacked up matrices."""
    h, rank = 256, 2
    g = torch.Generator().manual_seed(5)
    down = torch.randn(rank, h, generator=g)
    ups = [torch.randn(h, rank, generator=g) for _ in range(3)]
    peft = {}
    for n, up in zip("qkv", ups):
        peft[f"transformer.transformer_blocks.0.attn.to_{n}.lora_A.weight"] = down.clone()
        peft[f"transformer.transformer_blocks.0.attn.to_{n}.lora_B.weight"] = up
    kohya = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
             "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.cat(ups)}
    save_file(peft, str(tmp_path / "peft.safetensors"))
    save_file(kohya, str(tmp_path / "kohya.safetensors"))
    x, context, pooled = _inputs()
    a = build_component(_unet(files["flux_dev"]).with_lora(str(tmp_path / "peft.safetensors"), 0.5), "cpu")
    b = build_component(_unet(files["flux_dev"]).with_lora(str(tmp_path / "kohya.safetensors"), 0.5), "cpu")
    assert torch.allclose(_run(a, x, context, pooled), _run(b, x, context, pooled), rtol=0, atol=1e-6)


def test_flux_vae_has_16_channels_decodes_encodes_and_tiles(files):
    assert detect.vae_kind(detect.read_shapes(files["flux_vae"])) == "flux"
    vae = build_component(ModelHandle(files["flux_vae"], "vae", "flux"), "cpu")
    assert vae.latent_channels == 16 and vae.downscale == 8
    latent = torch.randn(1, 16, 8, 12)
    with torch.inference_mode():
        image = vae.decode(latent)
        assert image.shape == (1, 64, 96, 3)
        assert vae.encode(image).shape == (1, 16, 8, 12)
        tiled = vae.decode_tiled(latent, tile_size=64, overlap=16)
    assert tiled.shape == image.shape and (tiled - image).abs().mean() < 0.1
