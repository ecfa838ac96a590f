"""What every materialized component (UNet, text encoder, VAE) says about where it runs."""

from __future__ import annotations

import torch

FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


class DeviceAndDtype:
    """Mixin for `nn.Module` components: `device` and the compute `dtype`.

    The compute dtype is not always the storage dtype: the memory manager may store weights in
    fp8 and cast them per layer, so inputs must be cast to the dtype the layers compute in."""

    compute_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        for param in self.parameters():
            if param.is_floating_point() and param.dtype not in FP8_DTYPES:
                return param.dtype
        return torch.float32
