"""Conditioning nodes of ComfyUI's nodes.py beyond encode/combine/area: average, concat, area by
percentage, area strength, mask, timestep range (names, inputs, defaults and maths as ComfyUI's);
and the deprecated CheckpointLoader (its config file is not needed: diffmesh detects the model
from the weights).

CONDITIONING is `[[cond (1,T,D), {options}], ...]`; the sampler reads the options these nodes set
(area, strength, mask, mask_strength, set_area_to_bounds, start_percent, end_percent).
"""

from __future__ import annotations

import logging

import torch

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, combo, inp, out
from diffmesh.nodes.conditioning import set_values
from diffmesh.nodes.loaders import folder_choices, load_checkpoint

log = logging.getLogger("diffmesh.nodes")

STRENGTH = dict(default=1.0, min=0.0, max=10.0, step=0.01)


def _only_first(conditioning_from: list, node: str) -> torch.Tensor:
    if len(conditioning_from) > 1:
        log.warning("Warning: %s conditioning_from contains more than 1 cond, only the first one will actually "
                    "be applied to conditioning_to.", node)
    return conditioning_from[0][0]


def average(ctx: NodeContext, conditioning_to: list, conditioning_from: list, conditioning_to_strength: float):
    source = _only_first(conditioning_from, "ConditioningAverage")
    pooled_from = conditioning_from[0][1].get("pooled_output")
    result = []
    for cond, options in conditioning_to:
        pooled_to = options.get("pooled_output", pooled_from)
        other = source[:, :cond.shape[1]]
        if other.shape[1] < cond.shape[1]:                     # pad the shorter one with zero tokens
            other = torch.cat([other, torch.zeros((1, cond.shape[1] - other.shape[1], cond.shape[2]))], dim=1)
        mixed = cond * conditioning_to_strength + other * (1.0 - conditioning_to_strength)
        options = dict(options)
        if pooled_from is not None and pooled_to is not None:
            options["pooled_output"] = pooled_to * conditioning_to_strength + pooled_from * (1.0 - conditioning_to_strength)
        elif pooled_from is not None:
            options["pooled_output"] = pooled_from
        result.append([mixed, options])
    return (result,)


def concat(ctx: NodeContext, conditioning_to: list, conditioning_from: list):
    source = _only_first(conditioning_from, "ConditioningConcat")
    return ([[torch.cat((cond, source), 1), dict(options)] for cond, options in conditioning_to],)


def set_area_percentage(ctx: NodeContext, conditioning: list, width: float, height: float, x: float, y: float,
                        strength: float):
    return (set_values(conditioning, {"area": ("percentage", height, width, y, x), "strength": strength,
                                      "set_area_to_bounds": False}),)


def set_area_strength(ctx: NodeContext, conditioning: list, strength: float):
    return (set_values(conditioning, {"strength": strength}),)


def set_mask(ctx: NodeContext, conditioning: list, mask: torch.Tensor, strength: float, set_cond_area: str):
    if mask.ndim < 3:
        mask = mask.unsqueeze(0)
    return (set_values(conditioning, {"mask": mask, "set_area_to_bounds": set_cond_area != "default",
                                      "mask_strength": strength}),)


def set_timestep_range(ctx: NodeContext, conditioning: list, start: float, end: float):
    return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


def checkpoint_loader(ctx: NodeContext, config_name: str, ckpt_name: str):
    return load_checkpoint(ctx, ckpt_name)


def _unit(default: float) -> dict:
    return dict(default=default, min=0, max=1.0, step=0.01)


NODES = (
    NodeDef(NodeSchema(
        name="ConditioningAverage", display_name="ConditioningAverage", category="conditioning",
        inputs=(inp("conditioning_to", "CONDITIONING"), inp("conditioning_from", "CONDITIONING"),
                inp("conditioning_to_strength", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01)),
        outputs=out("CONDITIONING")), average),
    NodeDef(NodeSchema(
        name="ConditioningConcat", display_name="Conditioning (Concat)", category="conditioning",
        inputs=(inp("conditioning_to", "CONDITIONING"), inp("conditioning_from", "CONDITIONING")),
        outputs=out("CONDITIONING")), concat),
    NodeDef(NodeSchema(
        name="ConditioningSetAreaPercentage", display_name="Conditioning (Set Area with Percentage)",
        category="conditioning",
        inputs=(inp("conditioning", "CONDITIONING"), inp("width", "FLOAT", **_unit(1.0)),
                inp("height", "FLOAT", **_unit(1.0)), inp("x", "FLOAT", **_unit(0)), inp("y", "FLOAT", **_unit(0)),
                inp("strength", "FLOAT", **STRENGTH)),
        outputs=out("CONDITIONING")), set_area_percentage),
    NodeDef(NodeSchema(
        name="ConditioningSetAreaStrength", display_name="ConditioningSetAreaStrength", category="conditioning",
        inputs=(inp("conditioning", "CONDITIONING"), inp("strength", "FLOAT", **STRENGTH)),
        outputs=out("CONDITIONING")), set_area_strength),
    NodeDef(NodeSchema(
        name="ConditioningSetMask", display_name="Conditioning (Set Mask)", category="conditioning",
        inputs=(inp("conditioning", "CONDITIONING"), inp("mask", "MASK"), inp("strength", "FLOAT", **STRENGTH),
                combo("set_cond_area", ("default", "mask bounds"))),
        outputs=out("CONDITIONING")), set_mask),
    NodeDef(NodeSchema(
        name="ConditioningSetTimestepRange", display_name="ConditioningSetTimestepRange",
        category="advanced/conditioning",
        inputs=(inp("conditioning", "CONDITIONING"), inp("start", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
                inp("end", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001)),
        outputs=out("CONDITIONING")), set_timestep_range),
    NodeDef(NodeSchema(
        name="CheckpointLoader", display_name="Load Checkpoint With Config (DEPRECATED)", category="advanced/loaders",
        inputs=(combo("config_name", folder_choices("configs")), combo("ckpt_name", folder_choices("checkpoints"))),
        outputs=out("MODEL", "CLIP", "VAE"), deprecated=True), checkpoint_loader),
)
