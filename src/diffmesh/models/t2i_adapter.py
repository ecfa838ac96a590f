"""T2I-Adapters (the "full" adapter of SD1.x and SDXL) in ComfyUI's key layout, and diffusers' layout.

An adapter turns the hint image alone into one feature map per UNet level; they are added to the
UNet's hidden states inside its down path (ComfyUI's "input" control), the deepest one after the
middle block for SDXL ("middle"). Unlike a ControlNet the adapter sees neither the latent nor the
timestep, so one evaluation serves every step.

The network is written here rather than taken from diffusers' `T2IAdapter` because ComfyUI's
down-sampling pads odd sizes before pooling (its `Downsample` sets `padding = size % 2`), where
diffusers pools with `ceil_mode`: on latents of odd size the two differ, and ComfyUI's numbers are
the contract. Keys are ComfyUI's (`conv_in`, `body.N.{in_conv,block1,block2,down_opt.op}`); diffusers'
`adapter.body.I.resnets.J.*` files are renamed to them as ComfyUI's `load_t2i_adapter` does.
"""

from __future__ import annotations

import torch
from torch import nn

from diffmesh.errors import ModelError
from diffmesh.models.component import DeviceAndDtype


class _PadPool(nn.Module):
    """2x average pooling after padding odd sides by one on each end (zeros counted, as ComfyUI)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(x, 2, 2, padding=[x.shape[2] % 2, x.shape[3] % 2])


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool, ksize: int, use_conv: bool):
        super().__init__()
        if down:
            self.down_opt = nn.Module()
            self.down_opt.op = nn.Conv2d(cin, cin, 3, 2, 1) if use_conv else _PadPool()
        self.down = down
        self.in_conv = nn.Conv2d(cin, cout, ksize, 1, ksize // 2) if cin != cout else None
        self.block1 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.block2 = nn.Conv2d(cout, cout, ksize, 1, ksize // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt.op(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.block2(torch.relu(self.block1(x))) + x


class FullAdapter(nn.Module):
    """Pixel-unshuffle, conv_in, then two residual blocks per level at channels (c, 2c, 4c, 4c).

    SD1 (unshuffle 8): levels 2-4 start by halving the size; features go after input blocks 2, 5, 8, 11.
    SDXL (unshuffle 16): level 1 changes channels without halving, level 2 halves; the first three
    features go after input blocks 3, 5, 8 and the last one after the middle block."""

    def __init__(self, cin: int, channels: int, ksize: int, use_conv: bool, xl: bool):
        super().__init__()
        self.xl = xl
        self.unshuffle_amount = 16 if xl else 8
        widths = [channels, channels * 2, channels * 4, channels * 4]
        halving = {2} if xl else {1, 2, 3}
        blocks = []
        for level, width in enumerate(widths):
            for j in range(2):
                cin_block = widths[level - 1] if (j == 0 and level > 0) else width
                blocks.append(_ResBlock(cin_block, width, j == 0 and level in halving, ksize, use_conv))
        self.body = nn.ModuleList(blocks)
        self.conv_in = nn.Conv2d(cin, channels, 3, 1, 1)
        self.input_channels = cin // (self.unshuffle_amount ** 2)

    def forward(self, hint: torch.Tensor) -> dict[str, list]:
        x = self.conv_in(nn.functional.pixel_unshuffle(hint, self.unshuffle_amount))
        features: list = []
        for level in range(4):
            x = self.body[2 * level + 1](self.body[2 * level](x))
            gaps = (3 if level == 0 else 2 if level == 2 else 1) if self.xl else 2
            features += [None] * gaps + [x]
        features.reverse()           # the UNet pops from the end: the first feature goes to the earliest block
        if self.xl:
            return {"input": features[1:], "middle": features[:1]}
        return {"input": features}


def is_adapter(keys) -> bool:
    keys = set(keys)
    return "conv_in.weight" in keys or "adapter.conv_in.weight" in keys or "body.0.in_conv.weight" in keys


def comfy_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers `adapter.body.I.resnets.J.` -> `body.(2I+J).`, `adapter.body.I.in_conv` -> `body.(2I).in_conv`."""
    if "adapter.conv_in.weight" not in sd:
        return dict(sd)
    out = {}
    for key, value in sd.items():
        name = key[len("adapter."):] if key.startswith("adapter.") else key
        parts = name.split(".")
        if parts[0] == "body":
            i = int(parts[1])
            if parts[2] == "resnets":
                name = ".".join(["body", str(2 * i + int(parts[3]))] + parts[4:])
            else:
                name = ".".join(["body", str(2 * i)] + parts[2:])
        out[name] = value
    return out


def build_adapter(sd: dict[str, torch.Tensor], where: str) -> FullAdapter:
    """The adapter of a state dict in ComfyUI's or diffusers' layout (float32 on the CPU)."""
    sd = comfy_keys(sd)
    if "body.0.in_conv.weight" in sd:
        raise ModelError("the light T2I-adapter is not supported yet", where=where, fix="use a full T2I-adapter")
    cin, channels = sd["conv_in.weight"].shape[1], sd["conv_in.weight"].shape[0]
    ksize = sd["body.0.block2.weight"].shape[2]
    use_conv = any(k.endswith("down_opt.op.weight") for k in sd)
    adapter = FullAdapter(cin, channels, ksize, use_conv, xl=cin in (256, 768))
    missing, unexpected = adapter.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelError(f"T2I-adapter weights do not fit: missing {missing[:4]}, unexpected {unexpected[:4]}",
                         where=where, fix="unsupported T2I-adapter variant")
    return adapter.float().eval().requires_grad_(False)


class AdapterNetwork(DeviceAndDtype, nn.Module):
    """A loaded T2I-adapter; runs in float32 (ComfyUI runs it in the sampler's dtype, float32)."""

    kind = "t2i"

    def __init__(self, adapter: FullAdapter, ref):
        super().__init__()
        self.adapter = adapter
        self.ref = ref

    @property
    def unshuffle_amount(self) -> int:
        return self.adapter.unshuffle_amount

    @property
    def input_channels(self) -> int:
        return self.adapter.input_channels

    @torch.no_grad()
    def forward(self, hint: torch.Tensor) -> dict[str, list]:
        return self.adapter(hint.to(self.device, torch.float32))
