"""LoRA patches in the common key formats, applied on top of cached base weights.

Formats (a LoRA names modules; we map every name to a parameter of our converted components):
  kohya-ss:   lora_unet_<diffusers or LDM module path, dots as _>.lora_down/.lora_up.weight, .alpha
              lora_te_ (SD1/SD2), lora_te1_ / lora_te2_ (SDXL) + text_model_<HF module path>
  diffusers/PEFT: unet.<module>.lora_A/.lora_B.weight, text_encoder(_2).<module>..., also .lora.down/.up
Patch: W' = W + strength * (alpha / rank) * up @ down (alpha = rank when absent), computed in float32
on a copy, so the cached base tensors are never modified and a new strength never re-reads a file.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch

log = logging.getLogger(__name__)

# (down suffix, up suffix) pairs of the formats we read
SUFFIXES = ((".lora_down.weight", ".lora_up.weight"), (".lora_A.weight", ".lora_B.weight"),
            (".lora.down.weight", ".lora.up.weight"), (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"))


def lora_pairs(sd: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]:
    """module name (as the file writes it) -> (up, down, alpha)."""
    out = {}
    for key, down in sd.items():
        for dsuf, usuf in SUFFIXES:
            if key.endswith(dsuf):
                base = key[: -len(dsuf)]
                up = sd.get(base + usuf)
                if up is None:
                    continue
                alpha = sd.get(base + ".alpha")
                out[base] = (up, down, float(alpha) if alpha is not None else None)
    return out


def unet_aliases(module_names: Iterable[str], ldm_map: dict[str, str]) -> dict[str, str]:
    """LoRA name -> diffusers UNet module path, for every spelling we accept."""
    out = {}
    for m in module_names:
        out["lora_unet_" + m.replace(".", "_")] = m
        out["unet." + m] = m
    for ldm, m in ldm_map.items():
        out["lora_unet_" + ldm.replace(".", "_")] = m
    return out


def text_aliases(module_names: Iterable[str], lora_names: tuple[str, ...]) -> dict[str, str]:
    """LoRA name -> our CLIP module path (HF names without `text_model.`)."""
    kohya, peft = lora_names
    out = {}
    for m in module_names:
        out[f"{kohya}_" + ("text_model." + m).replace(".", "_")] = m
        out[f"{peft}.text_model.{m}"] = m
        out[f"{peft}.{m}"] = m
    return out


def lora_delta(up: torch.Tensor, down: torch.Tensor, alpha: float | None, shape: torch.Size) -> torch.Tensor:
    """(out, in[, k, k]) weight delta in float32 at strength 1."""
    rank = down.shape[0]
    scale = (alpha / rank) if alpha is not None else 1.0
    up32, down32 = up.float().reshape(up.shape[0], -1), down.float().reshape(rank, -1)
    return (up32 @ down32 * scale).reshape(shape)


def apply_loras(sd: dict[str, torch.Tensor], patches: list[tuple[dict, float]], aliases: dict[str, str],
                what: str) -> tuple[dict[str, torch.Tensor], int]:
    """Patched copy of state dict `sd`: (new dict sharing unpatched tensors, number of modules patched).

    patches: [(lora_pairs of one file, strength)], applied in order. Names the file has that
    address other components are skipped silently; names of this component that match nothing
    in it are logged (like ComfyUI's "lora key not loaded")."""
    out = dict(sd)
    patched = 0
    for pairs, strength in patches:
        if strength == 0:
            continue
        for name, (up, down, alpha) in pairs.items():
            module = aliases.get(name)
            if module is None:
                continue
            key = module + ".weight"
            base = out.get(key)
            if base is None:
                log.warning("LoRA module %s maps to %s, which %s does not have", name, key, what)
                continue
            new = base.float() + strength * lora_delta(up, down, alpha, base.shape)
            out[key] = new.to(base.dtype)
            patched += 1
    return out, patched


def unmatched_names(pairs: dict, aliases_by_part: list[dict[str, str]]) -> list[str]:
    """LoRA module names no component of the model knows (reported once per load)."""
    return [n for n in pairs if not any(n in a for a in aliases_by_part)]
