"""Materialize a `ModelHandle` as a runnable component on a device.

`WeightStore` keeps each file's CPU state dict (read once, safely) and the converted base weights
of each component, so a new LoRA strength or CLIP skip rebuilds a component from memory without
touching the file. Files never used with a LoRA are released as soon as a component is built:
the built module is then the only copy of its weights, which saves the checkpoint's size in RAM
(2 GB for SD1.5) in the common case. Reading a released file again for the next component is
cheap: safetensors files are memory-mapped and still in the page cache. `build_component` returns `torch.nn.Module`s with `.device` and `.dtype`, so the
memory manager can move or stream them like any module.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from diffmesh.errors import ModelError
from diffmesh.models import detect
from diffmesh.models.families import family_spec
from diffmesh.models.families import common
from diffmesh.models.handle import ModelHandle
from diffmesh.models import lora as lora_mod

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
          "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


class WeightStore:
    """CPU state dicts per file, loaded once; derived data (converted weights, configs) per key.

    A file replaced on disk (its size, mtime or inode changed since it was read) is noticed on the
    next use: everything held for it is dropped and the new file is read.
    `reads[path]` counts file reads, which tests use to prove a strength change does not re-read."""

    def __init__(self):
        self._files: dict[str, dict[str, torch.Tensor]] = {}
        self._derived: dict[Any, Any] = {}
        self._stamps: dict[str, tuple[int, int, int]] = {}    # path -> (size, mtime_ns, inode) when used
        self._patched: set[str] = set()             # files used with LoRA: their tensors are kept
        self._lock = threading.RLock()
        self.reads: Counter = Counter()

    def state_dict(self, path: str | Path) -> dict[str, torch.Tensor]:
        key = str(Path(path).resolve())
        with self._lock:
            self._check_unchanged(key)
            if key not in self._files:
                self._files[key] = _read_file(key)
                self.reads[key] += 1
            return self._files[key]

    def built(self, handle: ModelHandle) -> None:
        """Note that `handle`'s component was built; release tensors no later build will need."""
        key = str(Path(handle.path).resolve())
        with self._lock:
            if handle.loras:
                self._patched.add(key)
            if key in self._patched:
                return
            for k in [k for k in self._derived if isinstance(k, tuple) and k[:2] == (key, handle.component)]:
                del self._derived[k]
            self._files.pop(key, None)

    def derived(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if isinstance(key, tuple) and key and isinstance(key[0], str):
                self._check_unchanged(key[0])       # keys of file data start with the file's path
            if key not in self._derived:
                self._derived[key] = make()
            return self._derived[key]

    def _check_unchanged(self, key: str) -> None:
        """Drop what is held for file `key` when the file on disk is not the one it came from."""
        try:
            info = os.stat(key)
        except OSError:                     # not a file path (or gone): reading it reports the error
            return
        stamp = (info.st_size, info.st_mtime_ns, info.st_ino)
        previous = self._stamps.get(key)
        if previous is not None and previous != stamp:
            self.drop(key)
        self._stamps[key] = stamp

    def drop(self, path: str | Path) -> None:
        """Forget a file and everything derived from it (e.g. after it changed on disk)."""
        key = str(Path(path).resolve())
        with self._lock:
            self._files.pop(key, None)
            self._stamps.pop(key, None)
            for k in [k for k in self._derived if isinstance(k, tuple) and k and k[0] == key]:
                del self._derived[k]


def _read_file(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise ModelError("model file not found", where=path, fix="check the name and the models folders")
    if path.lower().endswith((".safetensors", ".sft")):
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises several error types for damaged files
            raise ModelError(f"cannot read safetensors file: {e}", where=path, fix="download it again") from e
    return {k: v for k, v in detect.load_torch_file(path).items() if isinstance(v, torch.Tensor)}


def resolve_dtype(dtype: Any, device: torch.device, component: str) -> torch.dtype:
    """fp32/fp16/bf16 strings or torch dtypes; None = fp32 on CPU, fp16 elsewhere (fp32 for the VAE)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.startswith("fp8_"):
        dtype = None                # fp8 is storage only (models.dit, devices.precision): compute as default
    if dtype is None or dtype == "default":
        if device.type == "cpu" or component == "vae":
            return torch.float32
        return torch.float16
    if dtype not in DTYPES:
        raise ModelError(f"unsupported weight dtype {dtype!r}", where=f"{component} dtype",
                         fix=f"use one of {sorted(set(DTYPES))} (e.g. --fp16-unet, --bf16-vae)")
    return DTYPES[dtype]


def _materialize(cls_builder: Callable[[], torch.nn.Module], sd: dict[str, torch.Tensor], where: str,
                 device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Build a module without random init (meta device), then assign the given weights."""
    with torch.device("meta"):
        module = cls_builder()
    missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(f"weights do not fit the model built from their shapes: missing {list(missing)[:4]}, "
                         f"unexpected {list(unexpected)[:4]}", where=where, fix="unsupported checkpoint variant")
    if any(t.is_meta for t in list(module.parameters()) + list(module.buffers())):
        raise ModelError("some weights were not loaded", where=where)
    # nn.Module.to directly: diffusers' override warns about keep-in-fp32 modules these models lack
    module = torch.nn.Module.to(module, device=device, dtype=dtype)
    module.eval().requires_grad_(False)
    return module


def _lora_patches(handle: ModelHandle, store: WeightStore) -> list[tuple[dict, float]]:
    return [(store.derived((str(Path(p.path).resolve()), "lora-pairs"),
                           lambda p=p: lora_mod.lora_pairs(store.state_dict(p.path))), p.strength)
            for p in handle.loras]


# ---------------------------------- components -------------------------------------------------

def _unet_base(handle: ModelHandle, store: WeightStore, family: str) -> dict:
    sd = store.state_dict(handle.path)
    prefix = detect.unet_prefix(sd)
    if prefix is None:
        raise ModelError("no UNet in this file", where=handle.path, fix="load a checkpoint, not a VAE or LoRA")
    ldm = common.strip_prefix(sd, prefix)
    shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    config = common.unet_config_from_shapes(shapes, family_spec(family))
    converted = common.convert_unet(ldm, config)
    aliases = lora_mod.unet_aliases({k.rsplit(".", 1)[0] for k in converted}, common.unet_module_map(shapes, config))
    return {"config": config, "sd": converted, "aliases": aliases}


def build_unet(handle: ModelHandle, device: torch.device, dtype: torch.dtype, store: WeightStore):
    from diffmesh.models.dit import FAMILY_MODULES

    family = handle.family or detect.detect_family(handle.path)
    if family in FAMILY_MODULES:                    # diffusion transformers (Flux, Z-Image, Qwen-Image)
        from dataclasses import replace

        from diffmesh.models.dit.model import build_dit

        return build_dit(replace(handle, family=family), device, dtype, store, _lora_patches(handle, store))
    # diffusers is imported only here: a DiT worker never pays its import (seconds, more on a busy machine).
    # From its submodule, not the package root: the root's lazy loader is not safe when two in-process
    # workers (threads) import at once, and then raises ImportError for a class that exists.
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    from diffmesh.models.unet import UNetModel
    from diffmesh.sampling import latent_formats
    from diffmesh.sampling.model_sampling import ModelSampling

    spec = family_spec(family)
    key = str(Path(handle.path).resolve())
    base = store.derived((key, "unet"), lambda: _unet_base(handle, store, family))
    sd, _ = lora_mod.apply_loras(base["sd"], _lora_patches(handle, store), base["aliases"], "the UNet")
    unet = _materialize(lambda: UNet2DConditionModel(**base["config"]), sd, handle.path, device, dtype)
    if handle.sampling is not None:                 # a ModelSampling* node on an SD model: flow sampling, as ComfyUI
        from diffmesh.sampling.model_sampling import FlowModelSampling

        sampling = FlowModelSampling(*handle.sampling)
    else:
        sampling = ModelSampling(prediction_type=spec.prediction_type)
    return UNetModel(unet, spec, sampling, latent_formats.for_family(family))


def _clip_base(handle: ModelHandle, store: WeightStore, index: int, te_spec: common.TextEncoderSpec) -> dict:
    from diffmesh.models.clip import CLIPConfig

    converted = common.text_encoder_state_dict(store.state_dict(handle.path), te_spec)
    cfg = CLIPConfig.from_state_dict(converted, te_spec.activation)
    aliases = lora_mod.text_aliases({k.rsplit(".", 1)[0] for k in converted}, te_spec.lora_names)
    return {"config": cfg, "sd": converted, "aliases": aliases}


def build_clip(handle: ModelHandle, device: torch.device, dtype: torch.dtype, store: WeightStore):
    from diffmesh.models.clip import CLIPTextModel
    from diffmesh.models.text_encoder import TextEncoder
    from diffmesh.models.text.load import build_text_encoder, is_text_encoder_family
    from diffmesh.models.tokenizer import CLIPTokenizer

    if handle.family == "clip_vision":          # CLIPVisionLoader / unCLIPCheckpointLoader's image encoder
        from diffmesh.models.clip_vision import build_clip_vision

        return build_clip_vision(handle, device, dtype, store)
    if is_text_encoder_family(handle.family):   # CLIPLoader / DualCLIPLoader types, transformer checkpoints
        return build_text_encoder(handle, device, dtype, store)
    family = handle.family or detect.detect_family(handle.path)
    spec = family_spec(family)
    key = str(Path(handle.path).resolve())
    patches = _lora_patches(handle, store)
    models = []
    for i, te in enumerate(spec.text_encoders):
        base = store.derived((key, "clip", i), lambda i=i, te=te: _clip_base(handle, store, i, te))
        sd, _ = lora_mod.apply_loras(base["sd"], patches, base["aliases"], f"text encoder {te.name}")
        if "text_projection.weight" not in sd and base["config"].projection:
            raise ModelError("text projection missing", where=handle.path)
        models.append(_materialize(lambda cfg=base["config"]: CLIPTextModel(cfg), sd,
                                   f"{handle.path} ({te.name})", device, dtype))
    tokenizer = store.derived("clip-tokenizer", CLIPTokenizer)
    return TextEncoder(spec, models, handle.clip_skip, handle.embedding_dirs, tokenizer).to(device)


def _vae_base(handle: ModelHandle, store: WeightStore) -> dict:
    sd = store.state_dict(handle.path)
    # SD checkpoints: first_stage_model.; all-in-one Flux files (ComfyUI's vae_key_prefix): vae.
    prefix = next((p for p in ("first_stage_model.", "vae.") if any(k.startswith(p) for k in sd)), "")
    ldm = common.strip_prefix(sd, prefix) if prefix else {k: v for k, v in sd.items()
                                                          if k.startswith(("encoder.", "decoder.", "quant_conv.",
                                                                           "post_quant_conv."))}
    if "decoder.conv_in.weight" not in ldm:
        raise ModelError("no VAE in this file", where=handle.path,
                         fix="use a checkpoint with a baked-in VAE or load a VAE file with VAELoader")
    config = common.vae_config_from_shapes({k: tuple(v.shape) for k, v in ldm.items()})
    if "quant_conv.weight" not in ldm:              # the Flux "ae" (16 channels) has no quant convs
        config.update(use_quant_conv=False, use_post_quant_conv=False)
    return {"config": config, "sd": common.convert_vae(ldm, config)}


def build_vae(handle: ModelHandle, device: torch.device, dtype: torch.dtype, store: WeightStore):
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL   # (see build_unet: thread-safe import)

    from diffmesh.models.vae import VAE

    if detect.vae_kind(detect.read_shapes(handle.path)) == "wan21":   # Wan 2.1 / Qwen-Image causal 3-D VAE
        from diffmesh.models.vae_wan import build_wan_vae

        return build_wan_vae(store.state_dict(handle.path), device, dtype)
    base = store.derived((str(Path(handle.path).resolve()), "vae"), lambda: _vae_base(handle, store))
    return VAE(_materialize(lambda: AutoencoderKL(**base["config"]), base["sd"], handle.path, device, dtype))


BUILDERS = {"unet": build_unet, "clip": build_clip, "vae": build_vae}


def build_component(handle: ModelHandle, device: Any = "cpu", dtype: Any = None, store: WeightStore | None = None):
    """DiffusionModel ("unet") | TextEncoder ("clip") | VAE ("vae") for `handle` on `device`.

    dtype: torch dtype, "fp32"/"fp16"/"bf16", or None (handle.dtype, else the device default)."""
    device = torch.device(device)
    store = store if store is not None else WeightStore()
    torch_dtype = resolve_dtype(dtype if dtype is not None else handle.dtype, device, handle.component)
    component = BUILDERS[handle.component](handle, device, torch_dtype, store)
    component.compute_dtype = torch_dtype
    store.built(handle)
    return component
