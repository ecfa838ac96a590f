"""`nodes`: the registry's nodes as ComfyUI V1 classes, `NODE_CLASS_MAPPINGS`, `MAX_RESOLUTION`.

Packs call core nodes from inside their own (`nodes.CLIPTextEncode().encode(clip, text)`,
`nodes.KSampler().sample(...)`). Each class here has ComfyUI's `INPUT_TYPES`, `RETURN_TYPES`,
`FUNCTION` (the method name ComfyUI gives that node, from `FUNCTIONS`), and the method runs the
diffmesh node with the calling node's context (its engine, folders and interrupt), so model work
still goes through diffmesh's engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from diffmesh.compat.modules import new_module
from diffmesh.compat.shims.comfy import MAX_RESOLUTION

# ComfyUI's FUNCTION name of each node of its nodes.py (facts read from ComfyUI's sources).
FUNCTIONS = MappingProxyType({
    "KSampler": "sample", "CheckpointLoaderSimple": "load_checkpoint", "CLIPTextEncode": "encode",
    "CLIPSetLastLayer": "set_last_layer", "VAEDecode": "decode", "VAEEncode": "encode",
    "VAEEncodeForInpaint": "encode", "VAELoader": "load_vae", "EmptyLatentImage": "generate",
    "LatentUpscale": "upscale", "LatentUpscaleBy": "upscale", "LatentFromBatch": "frombatch",
    "RepeatLatentBatch": "repeat", "SaveImage": "save_images", "PreviewImage": "save_images",
    "LoadImage": "load_image", "LoadImageMask": "load_image_mask", "LoadImageOutput": "load_image",
    "ImageScale": "upscale", "ImageScaleBy": "upscale", "ImageInvert": "invert", "ImageBatch": "batch",
    "ImagePadForOutpaint": "expand_image", "EmptyImage": "generate", "ConditioningAverage": "addWeighted",
    "ConditioningCombine": "combine", "ConditioningConcat": "concat", "ConditioningMultiply": "multiply",
    "ConditioningSetArea": "append", "ConditioningSetAreaPercentage": "append",
    "ConditioningSetAreaStrength": "append", "ConditioningSetMask": "append", "KSamplerAdvanced": "sample",
    "SetLatentNoiseMask": "set_mask", "LatentComposite": "composite", "LatentBlend": "blend",
    "LatentRotate": "rotate", "LatentFlip": "flip", "LatentCrop": "crop", "LoraLoader": "load_lora",
    "CLIPLoader": "load_clip", "UNETLoader": "load_unet", "DualCLIPLoader": "load_clip",
    "CLIPVisionEncode": "encode", "StyleModelApply": "apply_stylemodel", "unCLIPConditioning": "apply_adm",
    "ControlNetApply": "apply_controlnet", "ControlNetApplyAdvanced": "apply_controlnet",
    "ControlNetLoader": "load_controlnet", "DiffControlNetLoader": "load_controlnet",
    "StyleModelLoader": "load_style_model", "CLIPVisionLoader": "load_clip", "VAEDecodeTiled": "decode",
    "VAEEncodeTiled": "encode", "unCLIPCheckpointLoader": "load_checkpoint", "GLIGENLoader": "load_gligen",
    "GLIGENTextBoxApply": "append", "InpaintModelConditioning": "encode", "CheckpointLoader": "load_checkpoint",
    "DiffusersLoader": "load_checkpoint", "LoadLatent": "load", "SaveLatent": "save",
    "ConditioningZeroOut": "zero_out", "ConditioningSetTimestepRange": "set_range",
    "LoraLoaderModelOnly": "load_lora_model_only",
})


def v1_class(definition, paths):
    """A V1 class whose FUNCTION method runs `definition` inside the running node's context."""
    schema = definition.schema
    function = FUNCTIONS.get(schema.name, "execute")
    order = [spec.name for spec in schema.inputs]

    def run(self, *args, **kwargs):
        from diffmesh.nodes.custom import current_context

        ctx = current_context()
        if ctx is None:
            raise RuntimeError(f"nodes.{schema.name}().{function}() can only be called while a custom node runs")
        if len(args) > len(order):
            raise TypeError(f"{schema.name}.{function}() takes {len(order)} inputs, got {len(args)}")
        inputs = dict(zip(order, args), **kwargs)
        # the core node gets its own instance state, not the calling node's
        return definition.execute(dataclasses.replace(ctx, state={}), **inputs)

    info = schema.to_object_info(paths)
    attrs = {
        "INPUT_TYPES": classmethod(lambda cls: {k: v for k, v in schema.to_object_info(paths)["input"].items()}),
        "RETURN_TYPES": tuple(info["output"]), "RETURN_NAMES": tuple(info["output_name"]),
        "OUTPUT_IS_LIST": tuple(info["output_is_list"]), "FUNCTION": function, "CATEGORY": schema.category,
        "OUTPUT_NODE": schema.output_node, "DESCRIPTION": schema.description, function: run,
        "__doc__": f"diffmesh's {schema.name} node with ComfyUI's V1 class interface.",
    }
    return type(schema.name, (), attrs)


class NodeClasses(Mapping):
    """`NODE_CLASS_MAPPINGS`: the registry's nodes (core and custom, those added later too) as V1
    classes, each built once."""

    def __init__(self, registry, paths):
        self._registry, self._paths = registry, paths
        self._classes: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        if name not in self._classes:
            definition = self._registry[name]            # KeyError for an unknown node, as a dict
            self._classes[name] = v1_class(definition, self._registry.env(self._paths))
        return self._classes[name]

    def __iter__(self):
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry.names())


def build(layer):
    module = new_module("nodes", "ComfyUI's core node classes, backed by diffmesh's nodes.")
    classes = NodeClasses(layer.registry, layer.paths)
    missing = module.__getattr__

    def __getattr__(name: str):
        if name in layer.registry:
            return classes[name]
        return missing(name)

    module.__getattr__ = __getattr__
    module.NODE_CLASS_MAPPINGS = classes
    module.NODE_DISPLAY_NAME_MAPPINGS = {name: layer.registry[name].schema.display_name
                                         for name in layer.registry.names()}
    module.MAX_RESOLUTION = MAX_RESOLUTION
    return module
