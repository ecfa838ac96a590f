"""`comfy_api`, `comfy_api.latest` (`io`, `ui`, `ComfyExtension`): ComfyUI's V3 node API."""

from __future__ import annotations

from diffmesh.compat import v3_io
from diffmesh.compat.modules import new_module

IO_NAMES = ("Input", "Output", "Schema", "NodeOutput", "ComfyNode", "Hidden", "HiddenHolder", "NumberDisplay",
            "ControlAfterGenerate", "UploadType", "Boolean", "Int", "Float", "String", "Combo", "Custom")


def build_root(layer):
    return new_module("comfy_api", "ComfyUI's versioned node API (diffmesh offers `latest`).", package=True)


def build_io(layer):
    module = new_module("comfy_api.latest.io", "ComfyUI's V3 schema classes (diffmesh).")
    for name in IO_NAMES:
        setattr(module, name, getattr(v3_io, name))
    for name, cls in v3_io.PLAIN_TYPES.items():
        setattr(module, name, cls)
    return module


def build_ui(layer):
    module = new_module("comfy_api.latest.ui", "ComfyUI's V3 UI outputs (diffmesh offers PreviewText).")
    module.PreviewText = v3_io.PreviewText
    return module


def build_latest(layer):
    module = new_module("comfy_api.latest", "ComfyUI's V3 node API (diffmesh).", package=True)
    module.ComfyExtension = v3_io.ComfyExtension
    module.io = layer.module("comfy_api.latest.io")
    module.ui = layer.module("comfy_api.latest.ui")
    return module
