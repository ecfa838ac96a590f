"""Which model family a file holds, from its keys and shapes only (no weights are read).

Detection looks at structure, not at sizes, so tiny test models are recognised like real ones:
  - SDXL: the UNet has an ADM label embedding (`label_emb.0.0`) for pooled text + size conditioning;
  - SD2.x: transformer projections are linear (`proj_in` is 2-D), SD1.x: 1x1 convs (4-D);
  - SD2 v-prediction: ComfyUI's rule — the last output transformer's `norm1.bias` has a standard
    deviation above 0.09 in v models (trained from SD2 v) and well below in eps models; a `v_pred`
    key also marks a v model. This reads one small tensor.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from diffmesh.errors import ModelError

UNET_PREFIX = "model.diffusion_model."
FAMILIES = ("sd1", "sd2", "sd2v", "sdxl")
DIT_PREFIXES = (UNET_PREFIX, "")
# Flux "ae" VAE (also Z-Image's): the LDM autoencoder with 16 latent channels and no quant convs
FLUX_VAE_Z = 16
V_PRED_STD_THRESHOLD = 0.09


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """key -> shape, from the safetensors header or a memory-mapped torch file."""
    p = Path(path)
    if not p.is_file():
        raise ModelError("model file not found", where=str(p), fix="check the file name and the models folder")
    if p.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import safe_open

        try:
            with safe_open(str(p), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ModelError(f"cannot read safetensors header: {e}", where=str(p),
                             fix="the file may be truncated; download it again") from e
    return {k: tuple(v.shape) for k, v in load_torch_file(p).items() if isinstance(v, torch.Tensor)}


def load_torch_file(path: str | Path) -> dict:
    """A .ckpt/.pt/.bin state dict, loaded safely (weights_only) and memory-mapped when possible."""
    try:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            # legacy (non-zip) torch files cannot be memory-mapped
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ModelError(f"cannot load torch file safely: {e}", where=str(path),
                         fix="convert it to .safetensors; pickled code is never executed") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"expected a state dict, found {type(obj).__name__}", where=str(path))
    return obj


def unet_prefix(keys) -> str | None:
    keys = set(keys)
    if UNET_PREFIX + "input_blocks.0.0.weight" in keys:
        return UNET_PREFIX
    if "input_blocks.0.0.weight" in keys:
        return ""
    return None


def dit_family(shapes: dict) -> tuple[str, str] | None:
    """(family id, key prefix) of a diffusion-transformer file, or None."""
    from diffmesh.models import dit

    for prefix in DIT_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}
        if not stripped:
            continue
        for name in dit.FAMILY_MODULES:
            fam = dit.available_family(name)
            if fam is not None and fam.matches(stripped):
                return name, prefix
    return None


def vae_kind(shapes: dict) -> str:
    """'wan21' (Wan 2.1 / Qwen-Image causal 3-D VAE), 'flux' (16-channel LDM "ae") or 'sd' (4 channels)."""
    keys = {k.removeprefix("first_stage_model.").removeprefix("vae.") for k in shapes}
    if "decoder.middle.0.residual.0.gamma" in keys:
        return "wan21"
    for prefix in ("first_stage_model.", "vae.", ""):
        z = shapes.get(prefix + "decoder.conv_in.weight")
        if z is not None and z[1] == FLUX_VAE_Z and prefix + "post_quant_conv.weight" not in shapes:
            return "flux"
    return "sd"


def is_vae_file(keys) -> bool:
    keys = set(keys)
    vae = any(k in keys for k in ("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight",
                                   "decoder.middle.0.residual.0.gamma"))
    return vae and unet_prefix(keys) is None and not any(k.startswith(UNET_PREFIX) for k in keys)


def detect_kind(path: str | Path) -> str:
    """'checkpoint' | 'vae' | 'lora' | 'embedding' | 'unknown'."""
    keys = read_shapes(path)
    if unet_prefix(keys) is not None:
        return "checkpoint"
    found = dit_family(keys)
    if found is not None:
        return "checkpoint" if found[1] else "diffusion_model"
    if is_vae_file(keys):
        return "vae"
    if any(".lora_" in k or ".lora." in k or k.endswith(".alpha") for k in keys):
        return "lora"
    if any(k in keys for k in ("emb_params", "clip_l", "clip_g")) or any(k.startswith("string_to_param") for k in keys):
        return "embedding"
    return "unknown"


def _summary(keys) -> str:
    tops = sorted({k.split(".")[0] for k in keys})
    shown = ", ".join(tops[:8]) + (" ..." if len(tops) > 8 else "")
    return f"{len(keys)} tensors, top-level names: {shown or 'none'}"


def detect_family(path: str | Path) -> str:
    """'sd1' | 'sd2' | 'sd2v' | 'sdxl' for a single-file checkpoint or a bare UNet file; a DiT family id
    ('flux', 'zimage', 'qwenimage', 'wan21') for a diffusion-transformer file, bare or all-in-one."""
    shapes = read_shapes(path)
    prefix = unet_prefix(shapes)
    if prefix is None:
        found = dit_family(shapes)
        if found is not None:
            return found[0]
        if is_vae_file(shapes):
            raise ModelError("this is a VAE-only file, not a checkpoint", where=str(path),
                             fix="load it with VAELoader from the vae folder")
        raise ModelError(f"not a model diffmesh knows (no UNet input_blocks and no Flux.1, Z-Image, Qwen-Image or "
                         f"Wan 2.1 transformer keys found; {_summary(shapes)})", where=str(path),
                         fix="diffmesh supports SD1.x, SD2.x and SDXL checkpoints and Flux.1, Z-Image, "
                             "Qwen-Image and Wan 2.1 diffusion models")
    if prefix + "label_emb.0.0.weight" in shapes:
        # SD2.1 unCLIP: the ADM input is an image embedding and its noise level (2 x 768 ViT-L, 2 x 1024 ViT-H)
        return "sd2unclip" if shapes[prefix + "label_emb.0.0.weight"][1] in (1536, 2048) else "sdxl"
    proj = [shapes[k] for k in shapes if k.startswith(prefix) and k.endswith(".proj_in.weight")]
    if not proj:
        raise ModelError(f"UNet without cross-attention transformers ({_summary(shapes)})", where=str(path),
                         fix="only SD1.x, SD2.x and SDXL checkpoints are supported")
    if len(proj[0]) == 4:
        return "sd1"
    return "sd2v" if _is_v_prediction(path, shapes, prefix) else "sd2"


def _is_v_prediction(path, shapes, prefix) -> bool:
    if "v_pred" in shapes:
        return True
    pattern = re.compile(re.escape(prefix) + r"output_blocks\.(\d+)\.1\.transformer_blocks\.0\.norm1\.bias$")
    found = [(int(m.group(1)), k) for k in shapes if (m := pattern.match(k))]
    if not found:
        return False
    key = max(found)[1]
    bias = read_tensor(path, key)
    return float(torch.std(bias.float(), unbiased=False)) > V_PRED_STD_THRESHOLD


def read_tensor(path: str | Path, key: str) -> torch.Tensor:
    p = Path(path)
    if p.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import safe_open

        with safe_open(str(p), "pt") as f:
            return f.get_tensor(key)
    return load_torch_file(p)[key]
