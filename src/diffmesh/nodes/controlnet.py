"""ControlNet nodes of ComfyUI's nodes.py (ControlNetLoader, DiffControlNetLoader, ControlNetApply,
ControlNetApplyAdvanced) and comfy_extras' SetUnionControlNetType, with ComfyUI 0.8.0's schemas.

The loaders return a `models.controlnet.ControlNetRef` (a file reference, like a MODEL handle); the
apply nodes put a `sampling.control.AppliedControl` under the `control` key of each CONDITIONING
entry, chained to the control that entry already had. The networks run on the sampling worker.
"""

from __future__ import annotations

from dataclasses import replace

from diffmesh.errors import ModelError
from diffmesh.models.controlnet import UNION_CONTROLNET_TYPES, ControlNetRef, layout_of, ref_for_file
from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, OutputSpec, combo, inp, out
from diffmesh.nodes.loaders import folder_choices, resolve_model
from diffmesh.sampling.control import AppliedControl

STRENGTH = dict(default=1.0, min=0.0, max=10.0, step=0.01)
PERCENT = dict(min=0.0, max=1.0, step=0.001)


def _load(ctx: NodeContext, control_net_name: str, model=None) -> ControlNetRef:
    from diffmesh.models.detect import read_shapes

    path = resolve_model(ctx, "controlnet", control_net_name)
    try:
        layout_of(read_shapes(path).keys())       # reads the header only: a wrong file fails here, not mid-sampling
    except ModelError as exc:
        raise RuntimeError(f"ERROR: controlnet file is invalid and does not contain a valid controlnet model "
                           f"({control_net_name}): {exc.message}. {exc.fix or ''}".rstrip()) from exc
    return ref_for_file(path, base=model)


def load_controlnet(ctx: NodeContext, control_net_name: str):
    return (_load(ctx, control_net_name),)


def load_diff_controlnet(ctx: NodeContext, model, control_net_name: str):
    return (_load(ctx, control_net_name, model),)


def _hint(image):
    return image.movedim(-1, 1).float()          # IMAGE (B,H,W,3) -> (B,3,H,W)


def apply_controlnet(ctx: NodeContext, conditioning: list, control_net: ControlNetRef, image, strength: float):
    """The old node: every entry gets its own control, which also controls the negative side
    (`control_apply_to_uncond`), over the whole schedule."""
    if strength == 0:
        return (conditioning,)
    hint = _hint(image)
    result = []
    for cond, options in conditioning:
        d = dict(options)
        d["control"] = AppliedControl(control_net, hint, float(strength), previous=options.get("control"))
        d["control_apply_to_uncond"] = True
        result.append([cond, d])
    return (result,)


def apply_controlnet_advanced(ctx: NodeContext, positive: list, negative: list, control_net: ControlNetRef, image,
                              strength: float, start_percent: float, end_percent: float, vae=None):
    """One control per distinct previous control, shared by the positive and negative entries that had
    it, so cond and uncond still run in one UNet call (ComfyUI batches only equal controls)."""
    if strength == 0:
        return (positive, negative)
    hint = _hint(image)
    made: dict[int, AppliedControl] = {}
    outputs = []
    for conditioning in (positive, negative):
        result = []
        for cond, options in conditioning:
            d = dict(options)
            previous = d.get("control")
            key = id(previous)
            if key not in made:
                made[key] = AppliedControl(control_net, hint, float(strength), float(start_percent),
                                           float(end_percent), previous=previous, vae=vae)
            d["control"] = made[key]
            d["control_apply_to_uncond"] = False
            result.append([cond, d])
        outputs.append(result)
    return (outputs[0], outputs[1])


def set_union_type(ctx: NodeContext, control_net: ControlNetRef, type: str):
    number = UNION_CONTROLNET_TYPES.get(type, -1)
    return (replace(control_net, control_type=(number,) if number >= 0 else ()),)


NODES = (
    NodeDef(NodeSchema(
        name="ControlNetLoader", display_name="Load ControlNet Model", category="loaders",
        inputs=(combo("control_net_name", folder_choices("controlnet")),), outputs=out("CONTROL_NET"),
        search_aliases=("controlnet", "control net", "cn", "load controlnet", "controlnet loader")),
        load_controlnet),
    NodeDef(NodeSchema(
        name="DiffControlNetLoader", display_name="Load ControlNet Model (diff)", category="loaders",
        inputs=(inp("model", "MODEL"), combo("control_net_name", folder_choices("controlnet"))),
        outputs=out("CONTROL_NET")), load_diff_controlnet),
    NodeDef(NodeSchema(
        name="ControlNetApply", display_name="Apply ControlNet (OLD)", category="conditioning/controlnet",
        inputs=(inp("conditioning", "CONDITIONING"), inp("control_net", "CONTROL_NET"), inp("image", "IMAGE"),
                inp("strength", "FLOAT", **STRENGTH)),
        outputs=out("CONDITIONING"), deprecated=True), apply_controlnet),
    NodeDef(NodeSchema(
        name="ControlNetApplyAdvanced", display_name="Apply ControlNet", category="conditioning/controlnet",
        inputs=(inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"),
                inp("control_net", "CONTROL_NET"), inp("image", "IMAGE"), inp("strength", "FLOAT", **STRENGTH),
                inp("start_percent", "FLOAT", default=0.0, **PERCENT),
                inp("end_percent", "FLOAT", default=1.0, **PERCENT),
                inp("vae", "VAE", section="optional")),
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative")),
        search_aliases=("controlnet", "apply controlnet", "use controlnet", "control net")),
        apply_controlnet_advanced),
    NodeDef(NodeSchema(
        name="SetUnionControlNetType", display_name="SetUnionControlNetType", category="conditioning/controlnet",
        inputs=(inp("control_net", "CONTROL_NET"), combo("type", ("auto", *UNION_CONTROLNET_TYPES))),
        outputs=out("CONTROL_NET"), python_module="comfy_extras.nodes_controlnet"), set_union_type),
)
