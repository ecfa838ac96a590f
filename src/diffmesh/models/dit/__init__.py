"""Diffusion transformers (Flux.1, Z-Image, Qwen-Image, then Wan): one module per family.

Every family module `diffmesh.models.dit.<name>` exposes one `FAMILY = DiTFamily(...)` value;
generic code (detection, the `unet` builder in `diffmesh.models.load`, the sampling nodes) reads only
that value, so a new family is one new module and one entry in `FAMILY_MODULES`.

The network a family builds follows ComfyUI's calling convention, which is what its parity tests
compare against:
    net(x, timestep, context, **extra) -> velocity, same shape as x
    x:        (B, C, H, W) latent in model space (after `latent_format.process_in`); 5-D
              (B, C, T, H, W) for the Wan-format latents (Qwen-Image, Wan)
    timestep: (B,) float, sigma * model_sampling.multiplier, exactly what ComfyUI hands the model
    context:  (B, L, D) text conditioning rows
    extra:    the family's per-sample inputs from `extra_conds` (Flux: y = pooled (B, 768),
              guidance (B,); Z-Image: attention_mask; ...)
The wrapper (`diffmesh.models.dit.model.DiTModel`) casts inputs to the weight dtype and the output
back to float32, and carries `model_sampling` and `latent_format` for the sampling pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

# family id -> module under diffmesh.models.dit (imported lazily: nothing happens at import)
FAMILY_MODULES = {
    "flux": "flux",
    "zimage": "zimage",
    "qwenimage": "qwen_image",
    "wan21": "wan",
    "wan22": "wan22",
}


@dataclass(frozen=True)
class DiTFamily:
    """What generic code needs to know about one diffusion-transformer family.

    name:            family id ("flux", "zimage", "qwenimage"), also `ModelHandle.family`
    matches:         shapes of a file's keys (prefix already stripped) -> True when the file is this family
    config:          shapes -> the config dict `build` takes (everything the shapes say; family facts fixed)
    convert:         state dict in the file's layout -> state dict of the module `build` returns
    build:           config -> torch.nn.Module (called under the meta device; weights are assigned after)
    latent_format:   family id of `diffmesh.sampling.latent_formats` ("flux", "wan21", ...)
    sampling:        default FlowModelSampling arguments (kind, shift, multiplier) when no node sets them
    extra_conds:     (conditioning options dict, x shape) -> per-sample extra inputs with batch dim 1
    describe:        config -> short text for errors and logs ("Flux.1-dev, 19 double + 38 single blocks")
    sampling_for:    optional: config -> default sampling arguments when they depend on the file (Flux
                     schnell vs dev); None = `sampling` for every file
    lora_names:      optional: config -> {LoRA module name: (module of the built network, rows)} for the
                     names a LoRA format uses that differ from the built module's own (diffusers names of
                     fused layers, ...); rows = (first row, row count) of the target weight the LoRA's
                     delta replaces part of, or None for the whole weight. The module's own names (and
                     kohya's `lora_unet_` spelling of them) are always accepted.
    concat_cond:     optional: (options, x shape, config, latent format) -> the channels a file whose input
                     is wider than its latent (Flux Fill) takes after the latent (`c_concat`), or None
    """

    name: str
    matches: Callable[[dict[str, tuple]], bool]
    config: Callable[[dict[str, tuple]], dict]
    convert: Callable[[dict], dict]
    build: Callable[[dict], Any]
    latent_format: str
    sampling: tuple
    extra_conds: Callable[[dict, tuple], dict]
    describe: Callable[[dict], str]
    sampling_for: Callable[[dict], tuple] | None = None
    lora_names: Callable[[dict], dict] | None = None
    concat_cond: Callable[..., Any] | None = None

    def default_sampling(self, config: dict) -> tuple:
        """FlowModelSampling arguments of a file of this family when no ModelSampling* node sets them."""
        return self.sampling_for(config) if self.sampling_for is not None else self.sampling


def available_family(name: str) -> DiTFamily | None:
    """The `DiTFamily` of `name`, or None while its module is not written yet (detection skips it)."""
    import importlib

    module = f"diffmesh.models.dit.{FAMILY_MODULES[name]}"
    try:
        return importlib.import_module(module).FAMILY
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return None


def family(name: str) -> DiTFamily:
    """The `DiTFamily` of a family id (imports its module)."""
    import importlib

    from diffmesh.errors import ModelError

    if name not in FAMILY_MODULES:
        raise ModelError(f"unknown diffusion-transformer family {name!r}", where="model handle",
                         fix=f"one of {sorted(FAMILY_MODULES)}")
    return importlib.import_module(f"diffmesh.models.dit.{FAMILY_MODULES[name]}").FAMILY
