"""Text-encoder loaders and the Flux prompt node: CLIPLoader, DualCLIPLoader, CLIPTextEncodeFlux.

The loaders return CLIP handles whose `family` is the ComfyUI CLIP type; the second file of
DualCLIPLoader goes into `extra_paths`. Every value of ComfyUI's `type` lists validates; the types
diffmesh runs (`diffmesh.models.text.load.RUNNABLE`) are checked against the files' keys here, so
a wrong type or file fails when the node runs, with a message naming both. Encoding happens on a
worker (`ctx.engine.encode_text`), through the memory manager like every model component; the
`device` input ("cpu") or SelectCLIPDevice places it.
"""

from __future__ import annotations

from diffmesh.errors import ModelError
from diffmesh.models.handle import ModelHandle
from diffmesh.models.text.load import CLIP_TYPES, DUAL_CLIP_TYPES, check_files
from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, SchemaEnv, combo, inp, out
from diffmesh.nodes.conditioning import NO_CLIP
from diffmesh.nodes.loaders import folder_choices, resolve_model

CLIP_DESCRIPTION = ("[Recipes]\n\nstable_diffusion: clip-l\nstable_cascade: clip-g\nsd3: t5 xxl/ clip-g / clip-l\n"
                    "stable_audio: t5 base\nmochi: t5 xxl\ncosmos: old t5 xxl\nlumina2: gemma 2 2B\nwan: umt5 xxl\n"
                    " hidream: llama-3.1 (Recommend) or t5\nomnigen2: qwen vl 2.5 3B")
DUAL_DESCRIPTION = ("[Recipes]\n\nsdxl: clip-l, clip-g\nsd3: clip-l, clip-g / clip-l, t5 / clip-g, t5\nflux: clip-l, t5\n"
                    "hidream: at least one of t5 or llama, recommended t5 and llama\n"
                    "hunyuan_image: qwen2.5vl 7b and byt5 small")


def device_choices(env: SchemaEnv) -> list[str]:
    """ComfyUI's ["default", "cpu"], then this machine's other devices (diffmesh placement)."""
    return ["default", "cpu", *[d for d in env.device_names if d not in ("default", "cpu")]]


def _device_input():
    return combo("device", device_choices, section="optional", advanced=True)


def _placement(device: str | None) -> str | None:
    return None if device in (None, "", "default") else device


def _checked(paths, clip_type: str, node: str) -> str:
    try:
        return check_files(paths, clip_type, node)
    except ModelError as exc:
        raise ValueError(str(exc)) from exc


def load_clip(ctx: NodeContext, clip_name: str, type: str = "stable_diffusion", device: str = "default"):  # noqa: A002
    path = resolve_model(ctx, "text_encoders", clip_name)
    family = _checked([path], type, "CLIPLoader")
    embeddings = tuple(str(p) for p in ctx.paths.models.get("embeddings", []))
    return (ModelHandle(str(path), "clip", family, embedding_dirs=embeddings, device=_placement(device)),)


def load_dual_clip(ctx: NodeContext, clip_name1: str, clip_name2: str, type: str,  # noqa: A002
                   device: str = "default"):
    paths = [resolve_model(ctx, "text_encoders", clip_name1), resolve_model(ctx, "text_encoders", clip_name2)]
    family = _checked(paths, type, "DualCLIPLoader")
    embeddings = tuple(str(p) for p in ctx.paths.models.get("embeddings", []))
    return (ModelHandle(str(paths[0]), "clip", family, embedding_dirs=embeddings, device=_placement(device),
                        extra_paths=(str(paths[1]),)),)


def encode_flux(ctx: NodeContext, clip, clip_l: str, t5xxl: str, guidance: float):
    if clip is None:
        raise RuntimeError(NO_CLIP)
    if clip.family != "flux":
        raise ValueError(f"CLIPTextEncodeFlux needs a Flux CLIP (DualCLIPLoader type flux, or a Flux checkpoint); "
                         f"this CLIP is {clip.family!r}: use CLIPTextEncode for it")
    conditioning = ctx.engine.encode_text(clip, {"clip_l": clip_l, "t5xxl": t5xxl})
    return ([[cond, {**options, "guidance": guidance}] for cond, options in conditioning],)


def _prompt(name: str):
    return inp(name, "STRING", multiline=True, dynamicPrompts=True)


NODES = (
    NodeDef(NodeSchema(
        name="CLIPLoader", display_name="Load CLIP", category="advanced/loaders", description=CLIP_DESCRIPTION,
        inputs=(combo("clip_name", folder_choices("text_encoders")), combo("type", CLIP_TYPES), _device_input()),
        outputs=out("CLIP")), load_clip),
    NodeDef(NodeSchema(
        name="DualCLIPLoader", display_name="DualCLIPLoader", category="advanced/loaders",
        description=DUAL_DESCRIPTION,
        inputs=(combo("clip_name1", folder_choices("text_encoders")),
                combo("clip_name2", folder_choices("text_encoders")), combo("type", DUAL_CLIP_TYPES),
                _device_input()),
        outputs=out("CLIP")), load_dual_clip),
    NodeDef(NodeSchema(
        name="CLIPTextEncodeFlux", display_name="CLIPTextEncodeFlux", category="advanced/conditioning/flux",
        inputs=(inp("clip", "CLIP"), _prompt("clip_l"), _prompt("t5xxl"),
                inp("guidance", "FLOAT", default=3.5, min=0.0, max=100.0, step=0.1)),
        outputs=out("CONDITIONING"), python_module="comfy_extras.nodes_flux"), encode_flux),
)
