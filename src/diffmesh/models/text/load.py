"""Which text-encoder recipe a CLIPLoader / DualCLIPLoader type and its files make, and building it.

A text-encoder handle carries the ComfyUI CLIP type as its `family` ("flux", "lumina2",
"qwen_image", "stable_diffusion"); its files are `path` plus `extra_paths`. `check_files` runs
in the loader node (headers only) so a wrong type or file fails there with a message naming both;
`build_text_encoder` runs on the worker through the memory manager like every component.
All-in-one checkpoints of the transformer families reach the same builder with their DiT family
id ("flux", "zimage", "qwenimage"): the encoders are found in the file by key suffix.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from diffmesh.errors import ModelError
from diffmesh.models.handle import ModelHandle
from diffmesh.models.text import files

# ComfyUI's CLIPLoader / DualCLIPLoader `type` lists (every value validates)
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image", "flux2",
              "ovis", "longcat_image", "cogvideox", "lens", "pixeldit", "ideogram4", "boogu", "krea2", "joyimage",
              "mage", "minimax", "yue2")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image", "hunyuan_video_15",
                   "kandinsky5", "kandinsky5_image", "ltxv", "newbie", "ace")

# the types diffmesh runs, and the encoder kinds (files.KINDS) each needs, in any order
RUNNABLE = {
    "stable_diffusion": ("clip_l",),
    "lumina2": ("qwen3",),
    "qwen_image": ("qwen25",),
    "flux": ("clip_l", "t5xxl"),
    "wan": ("umt5",),
}
RECIPE_NAMES = {"stable_diffusion": "SD1.x CLIP-L", "lumina2": "Z-Image (Qwen3-4B)",
                "qwen_image": "Qwen-Image (Qwen2.5-VL-7B)", "flux": "Flux.1 (CLIP-L + T5-XXL)",
                "wan": "Wan (UMT5-XXL)"}
CHECKPOINT_FAMILIES = {"flux": "flux", "zimage": "lumina2", "qwenimage": "qwen_image"}

log = logging.getLogger(__name__)


def is_text_encoder_family(family: str | None) -> bool:
    return family in RUNNABLE or family in CHECKPOINT_FAMILIES


def _supported(node: str) -> str:
    types = [t for t in RUNNABLE if (t == "flux") == (node == "DualCLIPLoader")]
    return ", ".join(f"{t} ({RECIPE_NAMES[t]})" for t in types)


def check_files(paths: list[Path], clip_type: str, node: str) -> str:
    """The recipe (a `RUNNABLE` key) for `clip_type` and these files, or a ModelError saying why not."""
    from diffmesh.models.detect import read_shapes

    if clip_type not in RUNNABLE or (clip_type == "flux") != (node == "DualCLIPLoader"):
        raise ModelError(f"{node} type {clip_type!r} is not supported by diffmesh",
                         where=f"{node} input 'type'", fix=f"supported types: {_supported(node)}")
    found = [files.find_encoders(read_shapes(p)) for p in paths]
    kinds = [f[0].kind if len(f) == 1 else None for f in found]
    have = sorted(k for k in kinds if k)
    if have != sorted(RUNNABLE[clip_type]):
        what = "; ".join(f"{p.name}: {files.describe(f)}" for p, f in zip(paths, found))
        need = " + ".join(files.KINDS[k] for k in RUNNABLE[clip_type])
        fits = [t for t, k in RUNNABLE.items() if sorted(k) == have and len(have) == len(paths)]
        hint = f"these files fit type {fits[0]!r}" if fits else "or load files of a supported type"
        raise ModelError(f"type {clip_type!r} needs {need}, found {what}", where=f"{node} input 'clip_name'",
                         fix=f"choose the {need} file(s) for {clip_type}; {hint}")
    return clip_type


def _locate(handle: ModelHandle, store) -> dict[str, tuple[str, str]]:
    """kind -> (file, key prefix) of every text encoder in the handle's files."""
    out: dict[str, tuple[str, str]] = {}
    for path in (handle.path, *handle.extra_paths):
        shapes = {k: tuple(v.shape) for k, v in store.state_dict(path).items()}
        for found in files.find_encoders(shapes):
            out.setdefault(found.kind, (path, found.prefix))
    return out


def _sub_state_dict(store, path: str, prefix: str) -> dict[str, torch.Tensor]:
    n = len(prefix)
    return {k[n:]: v for k, v in store.state_dict(path).items() if k.startswith(prefix)}


# LoRA names of CLIP-L in Flux / SD LoRA files: kohya (`lora_te1_…`, `lora_te_…`) and diffusers/PEFT
CLIP_L_LORA_NAMES = (("lora_te1", "text_encoder"), ("lora_te", "text_encoder"))


def _clip_l(store, path: str, prefix: str, device, dtype, handle: ModelHandle):
    from diffmesh.models import lora as lora_mod
    from diffmesh.models.clip import CLIPConfig, CLIPTextModel
    from diffmesh.models.load import _lora_patches, _materialize

    sd = _sub_state_dict(store, path, prefix + "text_model.")
    sd.pop("embeddings.position_ids", None)
    if handle.loras:
        modules = {k.rsplit(".", 1)[0] for k in sd}
        aliases = {name: module for names in CLIP_L_LORA_NAMES
                   for name, module in lora_mod.text_aliases(modules, names).items()}
        sd, _ = lora_mod.apply_loras(sd, _lora_patches(handle, store), aliases, "text encoder clip_l")
    # ComfyUI's standalone clip_l also stores text_projection; Flux and SD1 use the unprojected pooled
    cfg = CLIPConfig.from_state_dict(sd, "quick_gelu")
    cfg = CLIPConfig(**{**cfg.__dict__, "projection": None})
    return _materialize(lambda: CLIPTextModel(cfg), sd, f"{path} (CLIP-L)", device, dtype)


def _sd_clip(handle: ModelHandle, located, store, device, dtype):
    from diffmesh.models.families import sd1
    from diffmesh.models.text_encoder import TextEncoder
    from diffmesh.models.tokenizer import CLIPTokenizer

    model = _clip_l(store, *located["clip_l"], device, dtype, handle)
    return TextEncoder(sd1.FAMILY, [model], handle.clip_skip, handle.embedding_dirs,
                       store.derived("clip-tokenizer", CLIPTokenizer))


def _t5_loras(handle: ModelHandle, store, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """T5 layers patched by LoRA files that name them as ComfyUI reads Flux LoRAs: kohya-style
    `lora_te2_encoder_block_0_layer_0_SelfAttention_q` (OneTrainer) or `lora_te3_…`."""
    from diffmesh.models import lora as lora_mod
    from diffmesh.models.load import _lora_patches

    modules = {k[: -len(".weight")] for k in sd if k.endswith(".weight") and k.startswith("encoder.")}
    aliases = {f"lora_te{i}_{m.replace('.', '_')}": m for m in modules for i in (2, 3)}
    return lora_mod.apply_loras(sd, _lora_patches(handle, store), aliases, "text encoder t5xxl")[0]


def _flux(handle: ModelHandle, located, store, device, dtype):
    from diffmesh.models.text import encoders, tokenizers as tk
    from diffmesh.models.text.language import build_language_model
    from diffmesh.models.tokenizer import CLIPTokenizer

    clip_l = _clip_l(store, *located["clip_l"], device, dtype, handle)
    path, prefix = located["t5xxl"]
    sd = _sub_state_dict(store, path, prefix)
    if handle.loras:
        sd = _t5_loras(handle, store, sd)
    t5 = build_language_model("t5xxl", sd, device, dtype, f"{path} (T5-XXL)")
    # tokenizers are kept per worker (WeightStore): reading a vocabulary takes seconds
    return encoders.FluxTextEncoder(clip_l, t5, handle.clip_skip, handle.embedding_dirs,
                                    store.derived("clip-tokenizer", CLIPTokenizer),
                                    store.derived("t5-tokenizer", tk.t5_tokenizer))


def _llm(recipe: str):
    def build(handle: ModelHandle, located, store, device, dtype):
        from diffmesh.models.text import encoders, tokenizers as tk
        from diffmesh.models.text.language import build_language_model

        kind = RUNNABLE[recipe][0]
        path, prefix = located[kind]
        model = build_language_model(kind, _sub_state_dict(store, path, prefix), device, dtype, f"{path} ({kind})")
        return encoders.LLMTextEncoder(encoders.ZIMAGE if recipe == "lumina2" else encoders.QWEN_IMAGE, model,
                                       handle.clip_skip, handle.embedding_dirs,
                                       store.derived("qwen-tokenizer", tk.qwen_tokenizer))
    return build


def _wan(handle: ModelHandle, located, store, device, dtype):
    from diffmesh.models.text import umt5

    return umt5.build(handle, located, store, device, dtype)


BUILDERS = {"stable_diffusion": _sd_clip, "flux": _flux, "lumina2": _llm("lumina2"), "qwen_image": _llm("qwen_image"),
            "wan": _wan}


def build_text_encoder(handle: ModelHandle, device: torch.device, dtype: torch.dtype, store):
    """The encoder component of a text-encoder handle (see the module docstring). LoRA: CLIP-L and T5
    layers are patched at their strengths; the Qwen encoders are not (logged)."""
    recipe = CHECKPOINT_FAMILIES.get(handle.family, handle.family)
    located = _locate(handle, store)
    missing = [k for k in RUNNABLE[recipe] if k not in located]
    if missing:
        raise ModelError(f"{RECIPE_NAMES[recipe]} needs {', '.join(files.KINDS[k] for k in missing)}; the files hold "
                         f"{', '.join(files.KINDS[k] for k in located) or 'no text encoder'}",
                         where=", ".join((handle.path, *handle.extra_paths)), fix="load the matching text encoder files")
    if handle.loras and recipe in ("lumina2", "qwen_image", "wan"):
        log.warning("LoRA patches are not applied to the %s text encoder (not supported yet)", RECIPE_NAMES[recipe])
    component = BUILDERS[recipe](handle, located, store, device, dtype)
    for extra in handle.extra_paths:
        if not handle.loras:
            store.drop(extra)          # the built modules now hold these weights (store.built releases `path`)
    return component.to(device)
