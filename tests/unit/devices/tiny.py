"""Small real diffusers / transformers components built from config dicts (random weights, fixed seed)."""

from __future__ import annotations

import torch
import torch.nn as nn

from diffmesh.models.handle import ModelHandle

UNET_CONFIG = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                   norm_num_groups=8)
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                  down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                  layers_per_block=1, norm_num_groups=8)


class Builder:
    """`build(device, dtype)` for a fixed random component; counts how often it was built."""

    def __init__(self, make, seed: int = 0):
        torch.manual_seed(seed)
        self.make = make
        self.state = make().state_dict()
        self.calls = 0

    def __call__(self, device, dtype):
        self.calls += 1
        module = self.make()
        module.load_state_dict(self.state)
        return module.to(device=device, dtype=dtype).eval()

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())


def unet_builder() -> Builder:
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging

    logging.set_verbosity_error()
    return Builder(lambda: UNet2DConditionModel(**UNET_CONFIG))


def vae_builder() -> Builder:
    from diffusers import AutoencoderKL

    return Builder(lambda: AutoencoderKL(**VAE_CONFIG), seed=1)


def clip_builder() -> Builder:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=300, bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                            num_attention_heads=4, max_position_embeddings=77)
    return Builder(lambda: CLIPTextModel(config), seed=2)


def mlp_builder(width: int = 64, depth: int = 8) -> Builder:
    return Builder(lambda: nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth)]), 3)


def handle(component: str, name: str = "tiny", dtype: str | None = None) -> ModelHandle:
    return ModelHandle(f"/models/{name}.safetensors", component, "sd1", dtype=dtype)


def unet_call(dtype: torch.dtype = torch.float32, x_seed: int = 0):
    """fn(unet) -> float32 output for fixed inputs given in `dtype` (the compute dtype)."""
    g = torch.Generator().manual_seed(x_seed)
    x, c = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([10.0, 500.0])

    def fn(unet):
        with torch.no_grad():
            return unet(x.to(dtype), t, c.to(dtype)).sample.float()
    return fn


def vae_call():
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1

    def fn(vae):
        with torch.no_grad():
            latent = vae.encode(image).latent_dist.mean
            return vae.decode(latent).sample
    return fn


def clip_call():
    ids = torch.tensor([[1, 5, 7, 9, 2] + [0] * 72])

    def fn(clip):
        with torch.no_grad():
            return clip(input_ids=ids).last_hidden_state
    return fn
