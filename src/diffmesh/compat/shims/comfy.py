"""`comfy`, `comfy.utils`, `comfy.model_management`, `comfy.comfy_types`, `comfy.sd`, `comfy.samplers`.

Each function here is a thin translation onto diffmesh: the progress bar and the interrupt reach
the running node's `NodeContext` (diffmesh.nodes.custom), files load with diffmesh's readers,
resizing is the ImageScale node's own function, and the sampler/scheduler lists are the KSampler
node's. Nothing here loads models: packs that call ComfyUI's model loaders are not supported.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypedDict

from diffmesh.compat.modules import new_module

MAX_RESOLUTION = 16384


def build_comfy(layer):
    return new_module("comfy", "diffmesh's stand-in for ComfyUI's `comfy` package.", package=True)


# -- comfy.utils --------------------------------------------------------------------------------

def load_torch_file(ckpt: str, safe_load: bool = False, device: Any = None, return_metadata: bool = False):
    """A state dict from a .safetensors or torch file (ComfyUI's signature), on `device` (CPU)."""
    import torch
    from safetensors import safe_open

    from diffmesh.models import detect

    path = str(ckpt)
    metadata = None
    if path.lower().endswith((".safetensors", ".sft")):
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
            sd = {key: handle.get_tensor(key) for key in handle.keys()}
    else:
        sd = detect.load_torch_file(path)
    if device is not None and torch.device(device).type != "cpu":
        sd = {k: v.to(device) if hasattr(v, "to") else v for k, v in sd.items()}
    return (sd, metadata) if return_metadata else sd


def common_upscale(samples, width: int, height: int, upscale_method: str, crop: str):
    """(B,C,H,W) resized to (B,C,height,width) as ComfyUI's ImageScale does."""
    from diffmesh.nodes.image import common_upscale as upscale

    return upscale(samples, int(width), int(height), upscale_method, crop)


def build_utils(layer):
    from diffmesh.nodes.custom import ProgressBar

    module = new_module("comfy.utils", "ProgressBar, load_torch_file, common_upscale (diffmesh).")
    module.ProgressBar = ProgressBar
    module.PROGRESS_BAR_ENABLED = True
    module.load_torch_file = load_torch_file
    module.common_upscale = common_upscale
    module.MAX_RESOLUTION = MAX_RESOLUTION
    return module


# -- comfy.model_management ---------------------------------------------------------------------

def _context():
    from diffmesh.nodes.custom import current_context

    return current_context()


def interrupt_current_processing(value: bool = True) -> None:
    """Ask the running prompt to stop (ComfyUI: the global flag; here: this prompt's flag)."""
    ctx = _context()
    if ctx is not None and ctx.interrupt is not None:
        ctx.interrupt.set() if value else ctx.interrupt.clear()


def processing_interrupted() -> bool:
    ctx = _context()
    return bool(ctx is not None and ctx.interrupt is not None and ctx.interrupt.is_set())


def throw_exception_if_processing_interrupted() -> None:
    from diffmesh.nodes.custom import check_interrupt

    check_interrupt()


def soft_empty_cache(force: bool = False) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_model_management(layer):
    import torch

    from diffmesh.nodes.base import Interrupted

    module = new_module("comfy.model_management", "Devices, interrupt and cache calls of ComfyUI (diffmesh).")
    main = torch.device(layer.device)
    module.get_torch_device = lambda: main
    module.intermediate_device = lambda: torch.device("cpu")     # node outputs live on the CPU in diffmesh
    module.unet_offload_device = lambda: torch.device("cpu")
    module.text_encoder_offload_device = lambda: torch.device("cpu")
    module.vae_offload_device = lambda: torch.device("cpu")
    module.interrupt_current_processing = interrupt_current_processing
    module.processing_interrupted = processing_interrupted
    module.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    module.soft_empty_cache = soft_empty_cache
    module.InterruptProcessingException = Interrupted   # what diffmesh's executor reports as an interrupt
    module.OOM_EXCEPTION = torch.cuda.OutOfMemoryError
    return module


# -- comfy.comfy_types --------------------------------------------------------------------------

class IO(str, Enum):
    """ComfyUI's node data type names; `"*"` matches anything and `"A,B"` either, as in ComfyUI."""

    STRING = "STRING"
    IMAGE = "IMAGE"
    MASK = "MASK"
    LATENT = "LATENT"
    BOOLEAN = "BOOLEAN"
    INT = "INT"
    FLOAT = "FLOAT"
    COMBO = "COMBO"
    CONDITIONING = "CONDITIONING"
    SAMPLER = "SAMPLER"
    SIGMAS = "SIGMAS"
    GUIDER = "GUIDER"
    NOISE = "NOISE"
    CLIP = "CLIP"
    CONTROL_NET = "CONTROL_NET"
    VAE = "VAE"
    MODEL = "MODEL"
    LORA_MODEL = "LORA_MODEL"
    LOSS_MAP = "LOSS_MAP"
    CLIP_VISION = "CLIP_VISION"
    CLIP_VISION_OUTPUT = "CLIP_VISION_OUTPUT"
    STYLE_MODEL = "STYLE_MODEL"
    GLIGEN = "GLIGEN"
    UPSCALE_MODEL = "UPSCALE_MODEL"
    AUDIO = "AUDIO"
    WEBCAM = "WEBCAM"
    POINT = "POINT"
    FACE_ANALYSIS = "FACE_ANALYSIS"
    BBOX = "BBOX"
    SEGS = "SEGS"
    VIDEO = "VIDEO"
    ANY = "*"
    NUMBER = "FLOAT,INT"
    PRIMITIVE = "STRING,FLOAT,INT,BOOLEAN"

    def __str__(self) -> str:
        return self.value

    def __ne__(self, value: object) -> bool:
        if self.value == "*" or value == "*":
            return False
        if not isinstance(value, str):
            return True
        return not (frozenset(self.value.split(",")) & frozenset(value.split(",")))

    __hash__ = str.__hash__


class InputTypeDict(TypedDict, total=False):
    required: dict
    optional: dict
    hidden: dict


class ComfyNodeABC:
    """Base class ComfyUI's typed V1 nodes derive from; diffmesh reads the same class attributes."""

    DESCRIPTION = ""
    CATEGORY = "sd"
    OUTPUT_NODE = False
    INPUT_IS_LIST = False


class CheckLazyMixin:
    """ComfyUI's default `check_lazy_status`: every input still None is needed."""

    def check_lazy_status(self, **kwargs) -> list[str]:
        return [name for name, value in kwargs.items() if value is None]


class FileLocator(TypedDict):
    filename: str
    subfolder: str
    type: str


def build_comfy_types(layer, name: str = "comfy.comfy_types"):
    module = new_module(name, "ComfyUI's node typing helpers (diffmesh).", package=name == "comfy.comfy_types")
    for item in (IO, InputTypeDict, ComfyNodeABC, CheckLazyMixin, FileLocator):
        setattr(module, item.__name__, item)
    return module


def build_node_typing(layer):
    return build_comfy_types(layer, "comfy.comfy_types.node_typing")


# -- comfy.samplers, comfy.sd -------------------------------------------------------------------

def build_samplers(layer):
    from diffmesh.nodes.sampling import SAMPLER_NAMES, SCHEDULER_NAMES

    module = new_module("comfy.samplers", "The sampler and scheduler names of KSampler (diffmesh).")
    module.SAMPLER_NAMES = list(SAMPLER_NAMES)
    module.KSAMPLER_NAMES = [n for n in SAMPLER_NAMES if n not in ("ddim", "uni_pc", "uni_pc_bh2")]
    module.SCHEDULER_NAMES = list(SCHEDULER_NAMES)
    module.KSampler = type("KSampler", (), {"SAMPLERS": list(SAMPLER_NAMES), "SCHEDULERS": list(SCHEDULER_NAMES),
                                            "__doc__": "The option lists of ComfyUI's KSampler class."})
    return module


def build_sd(layer):
    module = new_module("comfy.sd", "Importable for packs that only read names; ComfyUI's model loaders are "
                                    "not offered (use diffmesh's loader nodes through `nodes`).")
    return module
