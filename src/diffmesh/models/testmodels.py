"""Random-weight model files in the original single-file layouts, for tests and benchmarks.

`write_test_models(base_dir)` fills a ComfyUI-style `models/` tree with tiny checkpoints of each
family (SD1.x, SD2.x eps and v-prediction, SDXL), a separate VAE, LoRAs in the kohya and
diffusers/PEFT key formats and textual-inversion embeddings. Tiny models keep the structure that
loaders and detection look at (key names, conv vs linear projections, ADM label embedding, the
VAE's 8x downscale) and shrink only widths and depths, so a 64x64 image runs in well under a second.

`make_test_model("sd15", "full", path)` writes the same bytes as `reference/make_sd15_random.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from diffmesh.errors import ModelError
from diffmesh.models import testspecs as ts

TEST_MODELS_VERSION = "4"

# Tiny text encoders: vocabulary and positions stay real (49408, 77) so real prompts tokenize.
TINY_CLIP_L = dict(hidden=32, layers=2, inter=128)
TINY_OPEN_CLIP = dict(width=64, layers=3, inter=128, proj_dim=64)
TINY_VAE = dict(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)  # 4 levels: latent = image / 8
TINY_UNET = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1)
SDXL_TIME_EMBED = 256  # per size/crop/target value, fixed in SDXL (6 values)


def _sd1_spec(size: str) -> ts.Spec:
    s = ts.Spec()
    if size == "full":
        ts.unet_spec(s, "model.diffusion_model.")
        ts.vae_spec(s, "first_stage_model.")
        ts.clip_spec(s, "cond_stage_model.transformer.")
        return s
    ts.unet_spec(s, "model.diffusion_model.", attention_levels=(0, 1), context_dim=TINY_CLIP_L["hidden"], **TINY_UNET)
    ts.vae_spec(s, "first_stage_model.", **TINY_VAE)
    ts.clip_spec(s, "cond_stage_model.transformer.", **TINY_CLIP_L)
    return s


def _sd2_spec(size: str, v_prediction: bool) -> ts.Spec:
    s = ts.Spec()
    if size == "full":
        ts.unet_spec(s, "model.diffusion_model.", context_dim=1024, linear_proj=True)
        ts.vae_spec(s, "first_stage_model.")
        ts.open_clip_spec(s, "cond_stage_model.model.")
        last = 11
    else:
        ts.unet_spec(s, "model.diffusion_model.", attention_levels=(0, 1), context_dim=TINY_OPEN_CLIP["width"],
                     linear_proj=True, **TINY_UNET)
        ts.vae_spec(s, "first_stage_model.", **TINY_VAE)
        ts.open_clip_spec(s, "cond_stage_model.model.", **TINY_OPEN_CLIP)
        last = len(TINY_UNET["channel_mult"]) * (TINY_UNET["num_res_blocks"] + 1) - 1
    if v_prediction:
        key = f"model.diffusion_model.output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
        shape, _, _ = s.items[key]
        s.items[key] = (shape, "vpred_marker", None)
    return s


def _sdxl_spec(size: str) -> ts.Spec:
    s = ts.Spec()
    if size == "full":
        l_cfg, g_cfg = dict(hidden=768, layers=12, inter=3072), dict(width=1280, layers=32, inter=5120, proj_dim=1280)
        unet = dict(model_channels=320, channel_mult=(1, 2, 4), num_res_blocks=2, transformer_depth=(0, 2, 10))
        vae: dict = {}
    else:
        l_cfg, g_cfg = TINY_CLIP_L, TINY_OPEN_CLIP
        unet = dict(TINY_UNET, transformer_depth=(0, 2))
        vae = TINY_VAE
    context = l_cfg["hidden"] + g_cfg["width"]
    adm = 6 * SDXL_TIME_EMBED + g_cfg["proj_dim"]
    ts.unet_spec(s, "model.diffusion_model.", attention_levels=tuple(range(len(unet["channel_mult"]))),
                 context_dim=context, linear_proj=True, adm_in_channels=adm, **unet)
    ts.vae_spec(s, "first_stage_model.", **vae)
    ts.clip_spec(s, "conditioner.embedders.0.transformer.", **l_cfg)
    ts.open_clip_spec(s, "conditioner.embedders.1.model.", **g_cfg)
    return s


FAMILY_ALIASES = {"sd15": "sd1", "sd1": "sd1", "sd2": "sd2", "sd2v": "sd2v", "sdxl": "sdxl"}


def checkpoint_state_dict(family: str, size: str = "tiny", seed: int = 0,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    fam = FAMILY_ALIASES.get(family)
    if fam is None or size not in ("tiny", "full"):
        raise ModelError(f"no test model for family {family!r} size {size!r}", where="make_test_model",
                         fix=f"family one of {sorted(FAMILY_ALIASES)}, size tiny or full")
    spec = {"sd1": lambda: _sd1_spec(size), "sd2": lambda: _sd2_spec(size, False),
            "sd2v": lambda: _sd2_spec(size, True), "sdxl": lambda: _sdxl_spec(size)}[fam]()
    return ts.materialize(spec, seed, dtype)


def make_test_model(family: str, size: str, out_path: str | os.PathLike, seed: int = 0) -> str:
    """Write one random checkpoint; the CLI's `make-test-model` calls this.

    family: sd15|sd1, sd2, sd2v, sdxl; size: tiny|full; or a DiT file of `models.dit.testfiles.FILES`
    (flux, flux-schnell, flux-vae, ...) with size tiny|reference. Full SD1.5 is fp16 with the LDM extra
    buffers, byte-identical to `reference/make_sd15_random.py --variant full`; the rest is fp32."""
    out = str(out_path)
    from diffmesh.models.text.testfiles import FAMILIES as TEXT_ENCODERS, make_text_encoder

    if family in TEXT_ENCODERS:         # text encoders in ComfyUI's file layouts (clip_l, t5xxl, ...): tiny | full
        return make_text_encoder(family, size, out, seed)
    from diffmesh.models.dit.testfiles import FILES, make_dit_file
    from diffmesh.models import testmodels_dit

    if family in testmodels_dit.FAMILIES:       # zimage, qwenimage, wan21vae: tiny | reference (= full)
        return testmodels_dit.write(family, size, out, seed)
    if family in FILES:                 # diffusion transformers and their VAEs: tiny | reference
        if size not in ("tiny", "reference"):
            raise ModelError(f"no {size!r} test model for {family!r}", where="make_test_model",
                             fix="size tiny, or reference (the shapes of make_dit_random.py)")
        return make_dit_file(family, size, out, seed)
    from diffmesh.models import testmodels_vision

    if family in testmodels_vision.FILES:       # CLIP vision, style and GLIGEN models, SD2.1 unCLIP: tiny
        return testmodels_vision.write(family, size, out, seed)
    fam = FAMILY_ALIASES.get(family)
    if fam == "sd1" and size == "full":
        sd = checkpoint_state_dict("sd1", "full", seed, torch.float16)
        sd.update(ts.ldm_schedule_buffers())
        meta = {"format": "pt", "generator": "make_sd15_random.py", "variant": "full", "seed": str(seed),
                "dtype": "fp16", "note": "random weights, NOT a trained model"}
    else:
        dtype = torch.float16 if size == "full" else torch.float32
        sd = checkpoint_state_dict(family, size, seed, dtype)
        meta = {"format": "pt", "generator": "diffmesh.models.testmodels", "family": str(fam), "size": size,
                "seed": str(seed), "note": "random weights, NOT a trained model"}
    ts.save_safetensors_deterministic(sd, out, meta)
    return out


# ---------------------------------- VAE, LoRA, embeddings ------------------------------------

def vae_state_dict(seed: int = 7) -> dict[str, torch.Tensor]:
    """A separate tiny VAE file (LDM keys without prefix, like vae-ft-mse-840000)."""
    s = ts.Spec()
    ts.vae_spec(s, "", **TINY_VAE)
    return ts.materialize(s, seed, torch.float32)


def _lora_pair(sd, name, up_key, down_key, cout, cin, rank, seed, conv=False, alpha_key=None, alpha=None):
    g = torch.Generator().manual_seed(ts.key_seed(seed, name))
    shape_down = (rank, cin, 1, 1) if conv else (rank, cin)
    shape_up = (cout, rank, 1, 1) if conv else (cout, rank)
    # large enough that every LoRA visibly changes outputs in tests
    sd[f"{name}.{down_key}"] = torch.randn(shape_down, generator=g) * 0.5
    sd[f"{name}.{up_key}"] = torch.randn(shape_up, generator=g) * 0.5
    if alpha_key is not None:
        sd[f"{name}.{alpha_key}"] = torch.tensor(float(alpha if alpha is not None else rank))


def kohya_lora_sd1(rank: int = 4) -> dict[str, torch.Tensor]:
    """kohya-ss format with diffusers module names: lora_unet_* / lora_te_*, .lora_down/.lora_up/.alpha."""
    sd: dict[str, torch.Tensor] = {}
    c, h, ctx = TINY_UNET["model_channels"], TINY_CLIP_L["hidden"], TINY_CLIP_L["hidden"]
    targets = [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q", c, c, False),
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", c, ctx, False),
        ("lora_unet_mid_block_attentions_0_proj_in", 2 * c, 2 * c, True),
        ("lora_te_text_model_encoder_layers_0_self_attn_q_proj", h, h, False),
        ("lora_te_text_model_encoder_layers_1_mlp_fc1", TINY_CLIP_L["inter"], h, False),
    ]
    for name, cout, cin, conv in targets:
        _lora_pair(sd, name, "lora_up.weight", "lora_down.weight", cout, cin, rank, 11, conv, "alpha", rank / 2)
    return sd


def peft_lora_sd1(rank: int = 4) -> dict[str, torch.Tensor]:
    """diffusers/PEFT format: unet.<module>.lora_A/lora_B.weight, text_encoder.<module>..., no alpha."""
    sd: dict[str, torch.Tensor] = {}
    c, h = TINY_UNET["model_channels"], TINY_CLIP_L["hidden"]
    targets = [
        ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v", c, c),
        ("unet.up_blocks.1.attentions.1.transformer_blocks.0.ff.net.2", c, 4 * c),
        ("text_encoder.text_model.encoder.layers.0.self_attn.v_proj", h, h),
    ]
    for name, cout, cin in targets:
        _lora_pair(sd, name, "lora_B.weight", "lora_A.weight", cout, cin, rank, 12)
    return sd


def kohya_lora_sdxl(rank: int = 4) -> dict[str, torch.Tensor]:
    """kohya SDXL format: UNet modules named in the original (LDM) layout, lora_te1_/lora_te2_ encoders."""
    sd: dict[str, torch.Tensor] = {}
    c = TINY_UNET["model_channels"] * 2
    ctx = TINY_CLIP_L["hidden"] + TINY_OPEN_CLIP["width"]
    targets = [
        ("lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k", c, ctx),
        ("lora_unet_middle_block_1_proj_in", c, c),
        ("lora_unet_output_blocks_0_1_transformer_blocks_1_attn1_to_out_0", c, c),
        ("lora_te1_text_model_encoder_layers_0_self_attn_q_proj", TINY_CLIP_L["hidden"], TINY_CLIP_L["hidden"]),
        ("lora_te2_text_model_encoder_layers_1_self_attn_k_proj", TINY_OPEN_CLIP["width"], TINY_OPEN_CLIP["width"]),
    ]
    for name, cout, cin in targets:
        _lora_pair(sd, name, "lora_up.weight", "lora_down.weight", cout, cin, rank, 13, False, "alpha", rank)
    return sd


def _embedding(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, dim), generator=g) * 0.02


def _save(sd: dict[str, torch.Tensor], path: Path) -> str:
    ts.save_safetensors_deterministic(sd, str(path), {"note": "random weights, NOT a trained model"})
    return str(path)


def write_test_models(base_dir: str | os.PathLike) -> dict:
    """Fill `<base_dir>/models/{checkpoints,loras,embeddings,vae}` with tiny files.

    Returns {"base", "checkpoints": {family: path}, "loras": {name: path},
    "embeddings": {name: path}, "vae": {name: path}}. Idempotent: rewrites the same bytes."""
    base = Path(base_dir)
    models = base / "models"
    ck, lo, em, va = (models / d for d in ("checkpoints", "loras", "embeddings", "vae"))
    for d in (ck, lo, em, va):
        d.mkdir(parents=True, exist_ok=True)
    out: dict = {"base": str(base), "checkpoints": {}, "loras": {}, "embeddings": {}, "vae": {}}
    for fam in ("sd1", "sd2", "sd2v", "sdxl"):
        name = {"sd2v": "tiny-sd2-v"}.get(fam, f"tiny-{fam}")
        out["checkpoints"][fam] = make_test_model(fam, "tiny", ck / f"{name}.safetensors")
    out["vae"]["tiny"] = _save(vae_state_dict(), va / "tiny-vae.safetensors")
    out["loras"]["sd1_kohya"] = _save(kohya_lora_sd1(), lo / "tiny-sd1-kohya.safetensors")
    out["loras"]["sd1_peft"] = _save(peft_lora_sd1(), lo / "tiny-sd1-peft.safetensors")
    out["loras"]["sdxl_kohya"] = _save(kohya_lora_sdxl(), lo / "tiny-sdxl-kohya.safetensors")
    out["embeddings"]["sd1"] = _save({"emb_params": _embedding(2, TINY_CLIP_L["hidden"], 21)},
                                     em / "tiny-sd1-emb.safetensors")
    pt_path = em / "tiny-sd1-emb-pt.pt"
    # A1111 .pt layout: {"string_to_param": {"*": (n, dim)}, ...}
    torch.save({"string_to_param": {"*": _embedding(3, TINY_CLIP_L["hidden"], 22)}, "name": "tiny-sd1-emb-pt"},
               pt_path)
    out["embeddings"]["sd1_pt"] = str(pt_path)
    out["embeddings"]["sd2"] = _save({"emb_params": _embedding(2, TINY_OPEN_CLIP["width"], 23)},
                                     em / "tiny-sd2-emb.safetensors")
    out["embeddings"]["sdxl"] = _save({"clip_l": _embedding(2, TINY_CLIP_L["hidden"], 24),
                                       "clip_g": _embedding(2, TINY_OPEN_CLIP["width"], 25)},
                                      em / "tiny-sdxl-emb.safetensors")
    from diffmesh.models.dit.testfiles import write_flux_test_files

    out["flux"] = write_flux_test_files(models)     # diffusion_models/, vae/, loras/: tiny Flux files
    from diffmesh.models.testmodels_dit import write_tiny_dit_models

    out["dit"] = write_tiny_dit_models(models)      # tiny Z-Image, Qwen-Image, Wan 2.1 VAE
    return out
