"""A diffusion transformer as sampling sees it (`protocols.DiffusionModel`), and how one is built.

`DiTModel` wraps the network of any `DiTFamily` and carries what sampling needs: the flow model
sampling (a ModelSampling* node's override from the handle, else the family's default for this
file), the latent format and the family's extra conditioning inputs. Inputs and outputs are float32;
casting to the compute dtype happens here.

`build_dit(handle, device, dtype, store)` is the `unet` builder for DiT families. Weight storage:
  - a file's tensors are assigned to the network without conversion copies where the family keeps
    the file's layout (Flux);
  - `weight_dtype` fp8 (handle.dtype) stores Linear weights in fp8, and fp8 files ("fp8 e4m3fn"
    downloads) stay fp8; "scaled fp8" files keep their per-tensor `scale_weight` (or `weight_scale`)
    as a buffer of the layer. Both compute in the compute dtype through the cast hooks of
    `diffmesh.devices.precision` (weight -> compute dtype, times the scale, for one forward);
  - LoRAs are applied to a copy of the patched weights (row ranges of fused layers for diffusers names).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffmesh.errors import ModelError
from diffmesh.models.component import DeviceAndDtype
from diffmesh.models.dit import DiTFamily, family as dit_family

log = logging.getLogger(__name__)

SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
# LoRA names of the text-encoder part of a file: the text encoder's builder applies them
TEXT_ENCODER_LORA_PREFIXES = ("lora_te", "text_encoder", "te1.", "te2.", "lora_te1_", "lora_te2_")
DROPPED = ("scaled_fp8",)
DROPPED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
FP8_NAMES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
             "fp8_e5m2": torch.float8_e5m2}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)


class DiTModel(DeviceAndDtype, nn.Module):
    def __init__(self, net: nn.Module, fam: DiTFamily, config: dict, model_sampling: Any, latent_format: Any):
        super().__init__()
        self.net = net
        self.family = fam
        self.config = config
        self.model_sampling = model_sampling
        self.latent_format = latent_format
        # Wan 2.2 5B: the denoiser hands the inpaint mask to the model (per-frame timesteps) and keeps
        # the known latent un-noised (ComfyUI's WAN22.process_timestep / scale_latent_inpaint)
        self.mask_sets_timestep = bool(config.get("frame_timesteps"))

    def extra_conds(self, options: dict[str, Any], x_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
        extras = self.family.extra_conds(options, x_shape)
        if self.family.concat_cond is not None:     # Flux Fill: masked image + mask after the latent
            concat = self.family.concat_cond(options, x_shape, self.config, self.latent_format)
            if concat is not None:
                extras = {**extras, "c_concat": concat}
        return extras

    @torch.no_grad()
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, sequence: Any = None,
                **extra: torch.Tensor) -> torch.Tensor:
        """Velocity for x (B,C,H,W) or (B,C,T,H,W), timestep (B,), context (B,L,D); float32 in and out.
        `sequence` (sequence parallel, `models.dit.sequence`): this worker's share of the image tokens."""
        dev, dt = self.device, self.dtype
        timestep = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1).to(dev)
        if timestep.numel() == 1 and x.shape[0] > 1:
            timestep = timestep.expand(x.shape[0])
        extra = {k: (v.to(dev, dt) if v.is_floating_point() else v.to(dev)) for k, v in extra.items()}
        if sequence is not None:
            extra["sequence"] = sequence
        out = self.net(x.to(dev, dt), timestep, context.to(dev, dt), **extra)
        return out.float()


# ---------------------------------------------------------------- graph-side facts

def file_config(path: str, family_name: str) -> tuple[DiTFamily, dict]:
    """The family and the config of a DiT file from its header only (cheap: no tensor is read)."""
    from diffmesh.models import detect

    shapes = detect.read_shapes(path)
    found = detect.dit_family(shapes)
    prefix = found[1] if found else ""
    fam = dit_family(family_name)
    return fam, fam.config({k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)})


def sampling_args(handle) -> tuple:
    """FlowModelSampling arguments of a DiT model handle: the node override, else the file's default."""
    if handle.sampling is not None:
        return tuple(handle.sampling)
    fam, config = file_config(handle.path, handle.family)
    return tuple(fam.default_sampling(config))


# ---------------------------------------------------------------- building

def _split_file(sd: dict[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    """(weights, per-layer fp8 scales) of the transformer part of a file, prefix stripped."""
    weights, scales = {}, {}
    for key, t in sd.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        if key in DROPPED or key.endswith(DROPPED_SUFFIXES):
            continue
        scale = next((s for s in SCALE_SUFFIXES if key.endswith(s)), None)
        if scale is not None:
            scales[key[:-len(scale)]] = t.float().reshape(())
        else:
            weights[key] = t
    return weights, scales


def _base(handle, store) -> dict:
    from diffmesh.models import detect

    sd = store.state_dict(handle.path)
    found = detect.dit_family({k: tuple(v.shape) for k, v in sd.items()})
    if found is None or found[0] != handle.family:
        raise ModelError(f"expected a {handle.family} diffusion model, found "
                         f"{found[0] if found else 'no known transformer'}", where=handle.path,
                         fix="load this file with the loader of its model type")
    fam = dit_family(handle.family)
    weights, scales = _split_file(sd, found[1])
    config = fam.config({k: tuple(v.shape) for k, v in weights.items()})
    return {"family": fam, "config": config, "sd": fam.convert(weights), "scales": scales}


def _lora_aliases(fam: DiTFamily, config: dict, modules: set[str]) -> dict[str, tuple[str, Any]]:
    """Every LoRA spelling of a module name -> (module, rows): kohya, ComfyUI, diffusers/PEFT."""
    out: dict[str, tuple[str, Any]] = {}
    for m in modules:
        for name in (m, "diffusion_model." + m, "model.diffusion_model." + m, "lora_unet_" + m.replace(".", "_"),
                     "transformer." + m):
            out[name] = (m, None)
    extra = fam.lora_names(config) if fam.lora_names is not None else {}
    for name, target in extra.items():
        for spelling in (name, "transformer." + name, "lora_transformer_" + name.replace(".", "_"),
                         "base_model.model." + name):
            out.setdefault(spelling, tuple(target))
    return out


def _apply_loras(sd: dict, scales: dict, patches: list, aliases: dict, where: str) -> tuple[dict, dict]:
    """Patched copies of the addressed weights (a scaled fp8 weight is dequantized before patching)."""
    from diffmesh.models import lora as lora_mod

    sd, scales = dict(sd), dict(scales)
    for pairs, strength in patches:
        if strength == 0:
            continue
        unknown = [n for n in pairs if n not in aliases and not n.startswith(TEXT_ENCODER_LORA_PREFIXES)]
        if unknown:    # ComfyUI's "lora key not loaded": the file addresses modules this model lacks
            log.warning("%d LoRA modules match nothing in %s, e.g. %s", len(unknown), where, unknown[:3])
        for name, (up, down, alpha) in pairs.items():
            target = aliases.get(name)
            if target is None:
                continue
            module, rows = target
            base = sd.get(module + ".weight")
            if base is None:
                continue
            weight = base.float() * scales.pop(module, torch.tensor(1.0))
            start, count = rows if rows is not None else (0, weight.shape[0])
            delta = lora_mod.lora_delta(up, down, alpha, torch.Size((count,) + tuple(weight.shape[1:])))
            weight[start:start + count] += strength * delta
            sd[module + ".weight"] = weight if base.dtype in FP8 else weight.to(base.dtype)
    return sd, scales


def _place_weights(net: nn.Module, scales: dict, device: torch.device, compute: torch.dtype,
                   storage: torch.dtype | None) -> bool:
    """Cast every tensor to the compute dtype except fp8 Linear weights (kept, or made fp8 when
    `storage` asks); give scaled layers their scale buffer. True when some weight stays fp8."""
    any_fp8 = False
    for name, module in net.named_modules():
        for attr, t in list(module._parameters.items()):
            if t is None:
                continue
            if isinstance(module, nn.Linear) and attr == "weight" and (t.dtype in FP8 or storage is not None):
                dtype = t.dtype if t.dtype in FP8 else storage      # an fp8 file stays as it is
                any_fp8 = True
            else:
                dtype = compute
            module._parameters[attr] = nn.Parameter(t.detach().to(device=device, dtype=dtype), requires_grad=False)
        for attr, t in list(module._buffers.items()):
            if t is not None and t.is_floating_point():
                module._buffers[attr] = t.to(device=device, dtype=compute)
        if name in scales and isinstance(module, nn.Linear):
            module.register_buffer("scale_weight", scales[name].to(device), persistent=False)
    return any_fp8


def build_dit(handle, device: torch.device, dtype: torch.dtype, store, lora_patches: list) -> DiTModel:
    from diffmesh.devices.precision import attach_cast_hooks
    from diffmesh.sampling import latent_formats
    from diffmesh.sampling.model_sampling import FlowModelSampling

    key = str(Path(handle.path).resolve())
    base = store.derived((key, "unet"), lambda: _base(handle, store))
    fam, config = base["family"], base["config"]
    sd, scales = base["sd"], base["scales"]
    if lora_patches:
        modules = {k.rsplit(".", 1)[0] for k in sd if k.endswith(".weight")}
        aliases = store.derived((key, "unet", "lora-aliases"), lambda: _lora_aliases(fam, config, modules))
        sd, scales = _apply_loras(sd, scales, lora_patches, aliases, handle.path)
    with torch.device("meta"):
        net = fam.build(config)
    missing, unexpected = net.load_state_dict(sd, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(f"weights do not fit the {fam.describe(config)} built from their shapes: missing "
                         f"{list(missing)[:4]}, unexpected {list(unexpected)[:4]}", where=handle.path,
                         fix="unsupported variant of this model family")
    storage = FP8_NAMES.get(handle.dtype) if isinstance(handle.dtype, str) else None
    if _place_weights(net, scales, device, dtype, storage):
        attach_cast_hooks(net, dtype)
    net.eval().requires_grad_(False)
    sampling = FlowModelSampling(*sampling_args(handle))
    return DiTModel(net, fam, config, sampling, latent_formats.for_family(fam.latent_format))
