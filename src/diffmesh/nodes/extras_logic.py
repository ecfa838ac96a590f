"""ComfyUI's utility nodes that today's templates are built from: the If/Else switch, Custom Combo,
Not/And/Or (comfy_extras/nodes_logic.py), the primitives Text, Text (Multiline), Int, Float, Boolean
(nodes_primitive.py), Preview as Text (nodes_preview_any.py) and Resolution Selector
(nodes_resolution.py), with ComfyUI's names, inputs, defaults and outputs.

The switch's two branches are lazy: only the branch `switch` selects is computed (ComfyUI's
check_lazy_status), and its output has the branch's type (MatchType, resolved by the frontend).
"""

from __future__ import annotations

import json
import math
import sys

import torch

from diffmesh.nodes.base import NodeContext
from diffmesh.nodes.dynamic_inputs import autogrow, match_type, nest
from diffmesh.nodes.extras_base import choice, outs, text, v3, v3_node

LOGIC = "comfy_extras.nodes_logic"
PRIMITIVE = "comfy_extras.nodes_primitive"
ASPECT_RATIOS = {"1:1 (Square)": (1, 1), "2:3 (Portrait Photo)": (2, 3), "3:2 (Photo)": (3, 2),
                 "3:4 (Portrait Standard)": (3, 4), "4:3 (Standard)": (4, 3), "9:16 (Portrait Widescreen)": (9, 16),
                 "16:9 (Widescreen)": (16, 9), "21:9 (Ultrawide)": (21, 9)}


def switch_lazy(ctx: NodeContext, switch: bool, on_false=None, on_true=None):
    if switch and on_true is None:
        return ["on_true"]
    if not switch and on_false is None:
        return ["on_false"]
    return None


def switch_node(ctx: NodeContext, switch: bool, on_false=None, on_true=None):
    return (on_true if switch else on_false,)


def custom_combo_valid(paths, **inputs) -> bool:
    """The options are the user's own (frontend widgets), so nothing is checked, as in ComfyUI."""
    return True


def custom_combo(ctx: NodeContext, choice: str, index: int = 0, **inputs):
    return (choice, index)


def not_node(ctx: NodeContext, value):
    return (not value,)


def and_node(ctx: NodeContext, **inputs):
    return (all(nest(inputs, "values")["values"].values()),)


def or_node(ctx: NodeContext, **inputs):
    return (any(nest(inputs, "values")["values"].values()),)


def passthrough(ctx: NodeContext, value):
    return (value,)


def preview_text(source) -> str:
    """ComfyUI's Preview as Text: strings as they are, numbers and booleans with str(), anything
    else as indented JSON, falling back to str() (tensors print with 6 edge items)."""
    if isinstance(source, str):
        return source
    if isinstance(source, (int, float, bool)):
        return str(source)
    if source is None:
        return "None"
    try:
        return json.dumps(source, indent=4)
    except (TypeError, ValueError):
        pass
    torch.set_printoptions(edgeitems=6)
    try:
        return str(source)
    except Exception:  # noqa: BLE001 - any object's __str__ may fail; ComfyUI says so in the text
        return "source exists, but could not be serialized."
    finally:
        torch.set_printoptions(profile="default")


def preview_any(ctx: NodeContext, source=None):
    value = preview_text(source)
    return {"ui": {"text": (value,)}, "result": (value,)}


def resolution_selector(ctx: NodeContext, aspect_ratio: str, megapixels: float, multiple: int):
    w_ratio, h_ratio = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(megapixels * 1024 * 1024 / (w_ratio * h_ratio))
    return (round(w_ratio * scale / multiple) * multiple, round(h_ratio * scale / multiple) * multiple)


def _any_values() -> object:
    return autogrow("values", v3("value", "*"), prefix="value", min=1)


SWITCH = "switch"

NODES = (
    v3_node("ComfySwitchNode", "If/Else Switch", "utilities/logic",
            (v3("switch", "BOOLEAN"), match_type("on_false", SWITCH, lazy=True),
             match_type("on_true", SWITCH, lazy=True)),
            outs(("COMFY_MATCHTYPE_V3", "output")), switch_node, LOGIC, experimental=True,
            search_aliases=("if", "then", "switch", "conditional", "branch"), output_matchtypes=(SWITCH,),
            check_lazy_status=switch_lazy),
    v3_node("CustomCombo", "Custom Combo", "utilities", (choice("choice", []),),
            outs(("STRING", "STRING"), ("INT", "INDEX")), custom_combo, LOGIC, experimental=True,
            validate_inputs=custom_combo_valid),
    v3_node("ComfyNotNode", "Not", "utilities/logic", (v3("value", "*"),), outs("BOOLEAN"), not_node, LOGIC,
            description="Logical NOT operation. Returns true if the value is falsy. Uses Python's rules for truthiness.",
            search_aliases=("invert", "toggle", "negate", "flip boolean")),
    v3_node("ComfyAndNode", "And", "utilities/logic", (_any_values(),), outs("BOOLEAN"), and_node, LOGIC,
            description=("Logical AND operation. Returns true if all of the values are truthy. "
                         "Uses Python's rules for truthiness."), search_aliases=("all", "every")),
    v3_node("ComfyOrNode", "Or", "utilities/logic", (_any_values(),), outs("BOOLEAN"), or_node, LOGIC,
            description=("Logical OR operation. Returns true if any of the values are truthy. "
                         "Uses Python's rules for truthiness."), search_aliases=("any", "some")),
    v3_node("PrimitiveString", "Text", "utilities/primitive", (text("value"),), outs("STRING"), passthrough,
            PRIMITIVE, search_aliases=("text", "string", "text box", "prompt")),
    v3_node("PrimitiveStringMultiline", "Text (Multiline)", "utilities/primitive", (text("value", multiline=True),),
            outs("STRING"), passthrough, PRIMITIVE, essentials_category="Basics",
            search_aliases=("text", "string", "text multiline", "string multiline", "text box", "prompt")),
    v3_node("PrimitiveInt", "Int", "utilities/primitive",
            (v3("value", "INT", min=-sys.maxsize, max=sys.maxsize, control_after_generate="fixed"),),
            outs("INT"), passthrough, PRIMITIVE),
    v3_node("PrimitiveFloat", "Float", "utilities/primitive",
            (v3("value", "FLOAT", min=-sys.maxsize, max=sys.maxsize, step=0.1),), outs("FLOAT"), passthrough,
            PRIMITIVE),
    v3_node("PrimitiveBoolean", "Boolean", "utilities/primitive", (v3("value", "BOOLEAN"),), outs("BOOLEAN"),
            passthrough, PRIMITIVE),
    v3_node("PreviewAny", "Preview as Text", "utilities", (v3("source", "*"),), outs("STRING"), preview_any,
            "comfy_extras.nodes_preview_any", output_node=True, description="Preview any input value as text.",
            search_aliases=("show output", "inspect", "debug", "print value", "show text")),
    v3_node("ResolutionSelector", "Resolution Selector", "utilities",
            (choice("aspect_ratio", list(ASPECT_RATIOS), default="1:1 (Square)",
                    tooltip="The aspect ratio for the output dimensions."),
             v3("megapixels", "FLOAT", tooltip="Target total megapixels. 1.0 MP ≈ 1024x1024 for square.",
                default=1.0, min=0.1, max=16.0, step=0.1),
             v3("multiple", "INT", tooltip="Nearest multiple of the result to set the selected resolution to.",
                advanced=True, default=8, min=8, max=128, step=4)),
            outs(("INT", "width"), ("INT", "height")), resolution_selector, "comfy_extras.nodes_resolution",
            description=("Calculate width and height from aspect ratio and megapixel target. "
                         "Useful for setting up Empty Latent Image dimensions."),
            output_tooltips=("Calculated width in pixels multiplied by the selected multiple.",
                             "Calculated height in pixels multiplied by the selected multiple.")),
)
