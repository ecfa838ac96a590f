"""Loader nodes: they return model handles (spec §4.4), never weights.

A worker materializes a handle on its device when a node first needs it. Every loader takes an
optional `device` combo ("default" or a device name) that becomes `handle.device`, so a workflow
can place one model per device; it is optional, so ComfyUI workflows stay valid.
"""

from __future__ import annotations

from pathlib import Path

from diffmesh.errors import ModelError
from diffmesh.models.handle import ModelHandle
from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, SchemaEnv, combo, inp, out

LORA_STRENGTH = dict(default=1.0, min=-100.0, max=100.0, step=0.01)


def device_choices(env: SchemaEnv) -> list[str]:
    return ["default", *env.device_names]


def device_input():
    return combo("device", device_choices, section="optional",
                 tooltip="diffmesh: the device that runs this model (default: let the engine place it).")


def folder_choices(key: str):
    def choices(env: SchemaEnv) -> list[str]:
        return env.paths.list(key)
    return choices


def resolve_model(ctx: NodeContext, key: str, name: str) -> Path:
    """The file of a model combo value; ComfyUI's FileNotFoundError text when it is missing."""
    try:
        return ctx.paths.resolve(key, name)
    except ModelError as exc:
        raise FileNotFoundError(exc.message) from exc


def _placement(device: str | None) -> str | None:
    return None if device in (None, "", "default") else device


def _family(path: Path, fallback: str | None = None) -> str:
    from diffmesh.models.detect import detect_family

    try:
        return detect_family(str(path))
    except ModelError:
        if fallback is None:
            raise
        return fallback


def load_checkpoint(ctx: NodeContext, ckpt_name: str, device: str = "default"):
    path = resolve_model(ctx, "checkpoints", ckpt_name)
    family = _family(path)
    where = _placement(device)
    embeddings = tuple(str(p) for p in ctx.paths.models.get("embeddings", []))
    return (ModelHandle(str(path), "unet", family, device=where),
            ModelHandle(str(path), "clip", family, embedding_dirs=embeddings, device=where),
            ModelHandle(str(path), "vae", family, device=where))


def load_vae(ctx: NodeContext, vae_name: str, device: str = "default"):
    from diffmesh.models.detect import read_shapes, vae_kind

    path = resolve_model(ctx, "vae", vae_name)
    # A VAE-only file has no UNet keys to tell the family by: the SD VAE layout is shared by the SD
    # families; the 16-channel Flux "ae" serves Flux and Z-Image; the Wan 2.1 VAE Wan and Qwen-Image.
    kind = vae_kind(read_shapes(path))
    family = {"flux": "flux", "wan21": "wan21"}.get(kind) or _family(path, fallback="sd1")
    return (ModelHandle(str(path), "vae", family, device=_placement(device)),)


def load_lora(ctx: NodeContext, model: ModelHandle, clip: ModelHandle | None, lora_name: str,
              strength_model: float, strength_clip: float):
    if strength_model == 0 and strength_clip == 0:
        return (model, clip)
    path = str(resolve_model(ctx, "loras", lora_name))
    if strength_model != 0:
        model = model.with_lora(path, strength_model)
    if clip is not None and strength_clip != 0:
        clip = clip.with_lora(path, strength_clip)
    return (model, clip)


def load_lora_model_only(ctx: NodeContext, model: ModelHandle, lora_name: str, strength_model: float):
    return (load_lora(ctx, model, None, lora_name, strength_model, 0)[0],)


def set_last_layer(ctx: NodeContext, clip: ModelHandle, stop_at_clip_layer: int):
    return (clip.with_options(clip_skip=int(stop_at_clip_layer)),)


LORA_DESCRIPTION = ("LoRAs are used to modify diffusion and CLIP models, altering the way in which latents are "
                    "denoised such as applying styles. Multiple LoRA nodes can be linked together.")
LORA_TOOLTIPS = ("The modified diffusion model.", "The modified CLIP model.")

NODES = (
    NodeDef(NodeSchema(
        name="CheckpointLoaderSimple", display_name="Load Checkpoint", category="loaders",
        description="Loads a diffusion model checkpoint, diffusion models are used to denoise latents.",
        inputs=(combo("ckpt_name", folder_choices("checkpoints"), tooltip="The name of the checkpoint (model) to load."),
                device_input()),
        outputs=out("MODEL", "CLIP", "VAE"),
        output_tooltips=("The model used for denoising latents.", "The CLIP model used for encoding text prompts.",
                         "The VAE model used for encoding and decoding images to and from latent space.")),
        load_checkpoint),
    NodeDef(NodeSchema(
        name="VAELoader", display_name="Load VAE", category="loaders",
        inputs=(combo("vae_name", folder_choices("vae")), device_input()),
        outputs=out("VAE")), load_vae),
    NodeDef(NodeSchema(
        name="LoraLoader", display_name="Load LoRA", category="loaders", description=LORA_DESCRIPTION,
        inputs=(inp("model", "MODEL", tooltip="The diffusion model the LoRA will be applied to."),
                inp("clip", "CLIP", tooltip="The CLIP model the LoRA will be applied to."),
                combo("lora_name", folder_choices("loras"), tooltip="The name of the LoRA."),
                inp("strength_model", "FLOAT", **LORA_STRENGTH,
                    tooltip="How strongly to modify the diffusion model. This value can be negative."),
                inp("strength_clip", "FLOAT", **LORA_STRENGTH,
                    tooltip="How strongly to modify the CLIP model. This value can be negative.")),
        outputs=out("MODEL", "CLIP"), output_tooltips=LORA_TOOLTIPS), load_lora),
    # ComfyUI 0.8.0 derives this class from LoraLoader: it inherits the description and both tooltips.
    NodeDef(NodeSchema(
        name="LoraLoaderModelOnly", display_name="LoraLoaderModelOnly", category="loaders",
        description=LORA_DESCRIPTION,
        inputs=(inp("model", "MODEL"), combo("lora_name", folder_choices("loras")),
                inp("strength_model", "FLOAT", **LORA_STRENGTH)),
        outputs=out("MODEL"), output_tooltips=LORA_TOOLTIPS), load_lora_model_only),
    NodeDef(NodeSchema(
        name="CLIPSetLastLayer", display_name="CLIP Set Last Layer", category="conditioning",
        inputs=(inp("clip", "CLIP"), inp("stop_at_clip_layer", "INT", default=-1, min=-24, max=-1, step=1)),
        outputs=out("CLIP")), set_last_layer),
)
