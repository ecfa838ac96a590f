"""ComfyUI's V3 node schema (`comfy_api.latest.io`): the declaration classes packs build schemas
from, written for diffmesh. `Input.as_dict()` gives the option keys ComfyUI's /object_info shows
(names read from ComfyUI's `_io.py`); `diffmesh.compat.v3` turns a `ComfyNode` into a `NodeDef`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


def _pruned(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


class NumberDisplay(str, Enum):
    number = "number"
    slider = "slider"


class ControlAfterGenerate(str, Enum):
    fixed = "fixed"
    increment = "increment"
    decrement = "decrement"
    randomize = "randomize"


class UploadType(str, Enum):
    image = "image_upload"
    audio = "audio_upload"
    video = "video_upload"
    model = "file_upload"


class Hidden(str, Enum):
    unique_id = "UNIQUE_ID"
    prompt = "PROMPT"
    extra_pnginfo = "EXTRA_PNGINFO"
    dynprompt = "DYNPROMPT"
    auth_token_comfy_org = "AUTH_TOKEN_COMFY_ORG"
    api_key_comfy_org = "API_KEY_COMFY_ORG"


class HiddenHolder:
    """`cls.hidden` inside `execute`: the hidden values by name; absent ones are None."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)

    def __getattr__(self, key: str):
        return None


class Input:
    io_type = "*"

    def __init__(self, id: str, display_name: str | None = None, optional: bool = False,  # noqa: A002 - ComfyUI's name
                 tooltip: str | None = None, lazy: bool | None = None, extra_dict: dict | None = None,
                 raw_link: bool | None = None, advanced: bool | None = None, **options: Any):
        self.id, self.display_name, self.optional = id, display_name, optional
        self.tooltip, self.lazy, self.raw_link, self.advanced = tooltip, lazy, raw_link, advanced
        self.extra_dict = dict(extra_dict or {})
        self.options = options                 # widget options, each under ComfyUI's key

    def get_io_type(self) -> str:
        return self.options.get("widgetType") or self.io_type

    def as_dict(self) -> dict:
        """The V1 options dict (without `optional`, which picks the section)."""
        return _pruned({"display_name": self.display_name, "tooltip": self.tooltip, "lazy": self.lazy,
                        "rawLink": self.raw_link, "advanced": self.advanced}) | _pruned(self.options) \
            | _pruned(self.extra_dict)


class Output:
    io_type = "*"

    def __init__(self, id: str | None = None, display_name: str | None = None, tooltip: str | None = None,  # noqa: A002
                 is_output_list: bool = False, **_ignored: Any):
        self.id, self.display_name, self.tooltip, self.is_output_list = id, display_name or id, tooltip, is_output_list


def _widget(io_type: str, option_names: dict[str, str]):
    """An Input class taking ComfyUI's widget keywords; `option_names` maps keyword -> V1 key."""

    class WidgetInput(Input):
        def __init__(self, id: str, *args: Any, default: Any = None, socketless: bool | None = None,  # noqa: A002
                     force_input: bool | None = None, **kwargs: Any):
            base = {k: kwargs.pop(k) for k in ("display_name", "optional", "tooltip", "lazy", "extra_dict",
                                               "raw_link", "advanced") if k in kwargs}
            if io_type == "COMBO" and args:
                kwargs["options"] = args[0]
            options: dict[str, Any] = {"default": default.value if isinstance(default, Enum) else default,
                                       "socketless": socketless, "forceInput": force_input}
            for keyword, key in option_names.items():
                value = kwargs.pop(keyword, None)
                if isinstance(value, type) and issubclass(value, Enum):
                    value = [v.value for v in value]
                elif isinstance(value, Enum):
                    value = value.value
                if keyword == "upload" and value is not None:
                    options[value] = True
                    continue
                options[key] = value
            if kwargs:
                raise TypeError(f"{io_type} input {id!r}: unknown options {sorted(kwargs)}")
            super().__init__(id, **base, **options)

    WidgetInput.io_type = io_type
    return WidgetInput


def comfy_type(io_type: str, input_class: type | None = None) -> type:
    """A V3 type such as `io.Image`, with `.Input`, `.Output` and `.io_type`."""
    inp = input_class or type("Input", (Input,), {"io_type": io_type})
    out = type("Output", (Output,), {"io_type": io_type})
    return type(io_type.title().replace("_", ""), (), {"io_type": io_type, "Input": inp, "Output": out})


Boolean = comfy_type("BOOLEAN", _widget("BOOLEAN", {"label_on": "label_on", "label_off": "label_off"}))
Int = comfy_type("INT", _widget("INT", {"min": "min", "max": "max", "step": "step",
                                        "control_after_generate": "control_after_generate",
                                        "display_mode": "display"}))
Float = comfy_type("FLOAT", _widget("FLOAT", {"min": "min", "max": "max", "step": "step", "round": "round",
                                              "display_mode": "display", "gradient_stops": "gradient_stops"}))
String = comfy_type("STRING", _widget("STRING", {"multiline": "multiline", "placeholder": "placeholder",
                                                 "dynamic_prompts": "dynamicPrompts"}))
Combo = comfy_type("COMBO", _widget("COMBO", {"options": "options", "control_after_generate": "control_after_generate",
                                              "upload": "upload", "image_folder": "image_folder"}))
_PLAIN = {"Image": "IMAGE", "Mask": "MASK", "Latent": "LATENT", "Conditioning": "CONDITIONING", "Sampler": "SAMPLER",
          "Sigmas": "SIGMAS", "Noise": "NOISE", "Guider": "GUIDER", "Clip": "CLIP", "ControlNet": "CONTROL_NET",
          "Vae": "VAE", "Model": "MODEL", "ClipVision": "CLIP_VISION", "ClipVisionOutput": "CLIP_VISION_OUTPUT",
          "StyleModel": "STYLE_MODEL", "Gligen": "GLIGEN", "UpscaleModel": "UPSCALE_MODEL", "Audio": "AUDIO",
          "Video": "VIDEO", "AnyType": "*"}
PLAIN_TYPES = {name: comfy_type(io_type) for name, io_type in _PLAIN.items()}


def Custom(io_type: str) -> type:  # noqa: N802 - ComfyUI's name
    return comfy_type(io_type)


@dataclass
class Schema:
    node_id: str
    display_name: str | None = None
    category: str = "sd"
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    hidden: list = field(default_factory=list)
    description: str = ""
    search_aliases: list = field(default_factory=list)
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_dev_only: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False
    essentials_category: str | None = None
    has_intermediate_output: bool = False

    def finalize(self) -> None:
        """ComfyUI's rules: output nodes get PROMPT and EXTRA_PNGINFO; outputs get default ids."""
        self.hidden = list(self.hidden or [])
        if self.is_output_node:
            for item in (Hidden.prompt, Hidden.extra_pnginfo):
                if item not in self.hidden:
                    self.hidden.append(item)
        for i, output in enumerate(self.outputs or []):
            if output.id is None:
                output.id = f"_{i}_{output.io_type}_"


class NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: dict | None = None, block_execution: str | None = None):
        self.args, self.ui, self.expand, self.block_execution = args, ui, expand, block_execution

    @property
    def result(self):
        return self.args if self.args else None

    def __getitem__(self, index: int) -> Any:
        return self.args[index]


class ComfyNode:
    """Base of V3 nodes: classmethods `define_schema` and `execute`, optional `validate_inputs`,
    `fingerprint_inputs` and `check_lazy_status`."""

    hidden = HiddenHolder({})

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs) -> NodeOutput:
        raise NotImplementedError

    @classmethod
    def validate_inputs(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        raise NotImplementedError

    @classmethod
    def check_lazy_status(cls, **kwargs) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]


class ComfyExtension:
    """What `async def comfy_entrypoint()` returns: `get_node_list()` gives the node classes."""

    async def on_load(self) -> None:
        """Called once before `get_node_list`."""

    async def get_node_list(self) -> list[type[ComfyNode]]:
        raise NotImplementedError


class PreviewText:
    """`ui.PreviewText(value)`: the text a node shows (ComfyUI's `{"text": [...]}` ui output)."""

    def __init__(self, value: str, **_ignored: Any):
        self.value = value

    def as_dict(self) -> dict:
        return {"text": [self.value]}
