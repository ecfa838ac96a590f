"""GLIGENLoader and GLIGENTextBoxApply with ComfyUI's schemas and conditioning data.

GLIGENTextBoxApply appends `(pooled text, height // 8, width // 8, y // 8, x // 8)` to the
conditioning's `gligen` entry, `("position", GLIGEN, [boxes...])`, as ComfyUI does; the SD UNet runs
GLIGEN's position net and gated self-attention for that conditioning (`models.gligen`, `models.unet`).
"""

from __future__ import annotations

from diffmesh.models.handle import ModelHandle
from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out
from diffmesh.nodes.conditioning import MAX_RESOLUTION
from diffmesh.nodes.loaders import folder_choices, resolve_model


def load_gligen(ctx: NodeContext, gligen_name: str):
    from diffmesh.models.gligen import read_gligen

    return (read_gligen(str(resolve_model(ctx, "gligen", gligen_name))),)


def text_box_apply(ctx: NodeContext, conditioning_to: list, clip: ModelHandle, gligen_textbox_model, text: str,
                   width: int, height: int, x: int, y: int):
    # ComfyUI takes the unprojected pooled output; SD1.x text encoders (GLIGEN's) have no projection,
    # so their pooled output is the same vector
    pooled = ctx.engine.encode_text(clip, text)[0][1]["pooled_output"]
    box = (pooled, height // 8, width // 8, y // 8, x // 8)
    result = []
    for cond, options in conditioning_to:
        options = dict(options)
        previous = list(options["gligen"][2]) if "gligen" in options else []
        options["gligen"] = ("position", gligen_textbox_model, previous + [box])
        result.append([cond, options])
    return (result,)


def _position(default: int, low: int) -> dict:
    return dict(default=default, min=low, max=MAX_RESOLUTION, step=8)


NODES = (
    NodeDef(NodeSchema(
        name="GLIGENLoader", display_name="GLIGENLoader", category="loaders",
        inputs=(combo("gligen_name", folder_choices("gligen")),), outputs=out("GLIGEN")), load_gligen),
    NodeDef(NodeSchema(
        name="GLIGENTextBoxApply", display_name="GLIGENTextBoxApply", category="conditioning/gligen",
        inputs=(inp("conditioning_to", "CONDITIONING"), inp("clip", "CLIP"), inp("gligen_textbox_model", "GLIGEN"),
                inp("text", "STRING", multiline=True, dynamicPrompts=True),
                inp("width", "INT", **_position(64, 8)), inp("height", "INT", **_position(64, 8)),
                inp("x", "INT", **_position(0, 0)), inp("y", "INT", **_position(0, 0))),
        outputs=out("CONDITIONING")), text_box_apply),
)
