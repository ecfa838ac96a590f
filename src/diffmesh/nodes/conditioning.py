"""Conditioning nodes: text encoding (on a worker, through the engine) and list arithmetic."""

from __future__ import annotations

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, inp, out

MAX_RESOLUTION = 16384

NO_CLIP = ("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your checkpoint "
           "does not contain a valid clip or text encoder model.")


def encode(ctx: NodeContext, text: str, clip):
    if clip is None:
        raise RuntimeError(NO_CLIP)
    return (ctx.engine.encode_text(clip, text),)


def combine(ctx: NodeContext, conditioning_1: list, conditioning_2: list):
    return (conditioning_1 + conditioning_2,)


def set_values(conditioning: list, values: dict) -> list:
    """A new CONDITIONING whose option dicts carry `values`; tensors are shared, not copied."""
    return [[cond, {**options, **values}] for cond, options in conditioning]


def set_area(ctx: NodeContext, conditioning: list, width: int, height: int, x: int, y: int, strength: float):
    # area = (height, width, y, x) in latent pixels, as the sampler's area weighting expects.
    area = (height // 8, width // 8, y // 8, x // 8)
    return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


def _res(default: int) -> dict:
    return dict(default=default, min=64 if default else 0, max=MAX_RESOLUTION, step=8)


NODES = (
    NodeDef(NodeSchema(
        name="CLIPTextEncode", display_name="CLIP Text Encode (Prompt)", category="conditioning",
        description=("Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
                     "diffusion model towards generating specific images."),
        inputs=(inp("text", "STRING", multiline=True, dynamicPrompts=True, tooltip="The text to be encoded."),
                inp("clip", "CLIP", tooltip="The CLIP model used for encoding the text.")),
        outputs=out("CONDITIONING"),
        output_tooltips=("A conditioning containing the embedded text used to guide the diffusion model.",)),
        encode),
    NodeDef(NodeSchema(
        name="ConditioningCombine", display_name="Conditioning (Combine)", category="conditioning",
        inputs=(inp("conditioning_1", "CONDITIONING"), inp("conditioning_2", "CONDITIONING")),
        outputs=out("CONDITIONING")), combine),
    NodeDef(NodeSchema(
        name="ConditioningSetArea", display_name="Conditioning (Set Area)", category="conditioning",
        inputs=(inp("conditioning", "CONDITIONING"),
                inp("width", "INT", **_res(64)), inp("height", "INT", **_res(64)),
                inp("x", "INT", **_res(0)), inp("y", "INT", **_res(0)),
                inp("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01)),
        outputs=out("CONDITIONING")), set_area),
)
