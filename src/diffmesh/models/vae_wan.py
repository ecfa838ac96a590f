"""The Wan 2.1 VAE (also Qwen-Image's VAE: same architecture) and the Wan 2.2 VAE (48 channels,
`models.vae_wan22` maps its keys), from the original Wan file layouts.

Files in the original layout (`encoder.downsamples.*`, `decoder.upsamples.*`, `encoder.middle.*`,
`conv1`/`conv2`, RMS-norm `gamma`s) are converted with diffusers' `convert_wan_vae_to_diffusers` and
run by diffusers' `AutoencoderKLWan`: a causal 3-D conv VAE that decodes latent frame by latent
frame with causal caches (latent frame 0 -> 1 frame, each further one -> 4 frames) and encodes
frames 1, 4, 4, ... the same way. Its decode matches ComfyUI's WanVAE to 123-131 dB PSNR on the
reference run (wan21_64_euler, all 5 frames).

Conventions follow ComfyUI's VAE nodes for video VAEs:
  - decode: latent (B, 16, T, h, w) unscaled (after the latent format's process_out) -> images
    (B*T', 8h, 8w, 3) in [0, 1], frames of each sample in order, T' = 1 + 4*(T-1); a Qwen-Image
    latent (B, 16, 1, h, w) gives B images. A 4-D latent is read as one frame. Wan 2.2: 48
    channels and 16x (2x2 pixel patches around the same 8x network).
  - memory: one causal chunk at a time (a latent frame when decoding), its output moved to the
    CPU at once, so the device's peak does not grow with the clip's length.
  - encode: images (N, H, W, 3) are the N frames of one video (ComfyUI's VAEEncode on a video VAE),
    cropped to a multiple of 8 -> latent mean (1, 16, 1 + (N-1)//4, H/8, W/8).
  - decode_tiled: spatial tiles over all frames at once (time stays whole, so the causal caches see
    every frame), blended like the image VAE's tiles.

Usage (the VAE builder of `diffmesh.models.load`):
    from diffmesh.models import vae_wan
    if vae_wan.is_wan_vae(state_dict.keys()):
        vae = vae_wan.build_wan_vae(state_dict, device, dtype)   # VAEModel: decode/encode/decode_tiled
"""

from __future__ import annotations

import torch
from torch import nn

from diffmesh.errors import ModelError
from diffmesh.models.component import DeviceAndDtype

MARKER = "decoder.middle.0.residual.0.gamma"            # ComfyUI keys its Wan VAE detection on this
WAN22_MARKER = "decoder.upsamples.0.upsamples.0.residual.2.weight"
LEVELS, RES_BLOCKS = 4, 2                               # the layout diffusers' converter maps


def is_wan_vae(keys) -> bool:
    """True for a Wan VAE file in the original layout (Wan 2.1 / Qwen-Image; also Wan 2.2, which
    `build_wan_vae` refuses with a message)."""
    keys = set(keys)
    return any(prefix + MARKER in keys for prefix in ("", "first_stage_model.", "vae."))


def _strip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE part of a file: bare, or under `first_stage_model.` / `vae.` in an all-in-one file."""
    for prefix in ("first_stage_model.", "vae."):
        if prefix + MARKER in sd:
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def wan_vae_config(shapes: dict[str, tuple]) -> dict:
    """AutoencoderKLWan arguments from an original-layout file's shapes (Wan 2.1 or Wan 2.2)."""
    if WAN22_MARKER in shapes:
        from diffmesh.models import vae_wan22

        return vae_wan22.config(shapes)
    dim = shapes["encoder.conv1.weight"][0]
    top = shapes["encoder.head.2.weight"][1]
    if top != dim * 4 or f"decoder.upsamples.{(LEVELS - 1) * (RES_BLOCKS + 2)}.residual.0.gamma" not in shapes:
        raise ModelError(f"unsupported Wan VAE layout (base width {dim}, top width {top})", where="VAELoader",
                         fix="diffmesh reads the Wan 2.1 VAE layout: 4 levels (1, 2, 4, 4), 2 residual blocks each")
    # the downsampling stages with a time_conv halve time: (False, True, True) in Wan 2.1
    stages = [RES_BLOCKS + i * (RES_BLOCKS + 1) for i in range(LEVELS - 1)]
    temporal = [f"encoder.downsamples.{s}.time_conv.weight" in shapes for s in stages]
    return {"base_dim": dim, "z_dim": shapes["conv2.weight"][0], "dim_mult": [1, 2, 4, 4],
            "num_res_blocks": RES_BLOCKS, "temperal_downsample": temporal}


def build_wan_vae(state_dict: dict[str, torch.Tensor], device, dtype: torch.dtype) -> "WanVAE":
    """A `WanVAE` (VAEModel protocol) from an original-layout state dict, built on the meta device and
    given the file's tensors (no second copy on CPU in fp32)."""
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    from diffmesh.models import vae_wan22

    sd = _strip(state_dict)
    cfg = wan_vae_config({k: tuple(v.shape) for k, v in sd.items()})
    wan22 = cfg.get("is_residual", False)
    with torch.device("meta"):
        model = AutoencoderKLWan(**cfg)
    converted = vae_wan22.convert(sd) if wan22 else convert_wan_vae_to_diffusers(sd)
    missing, unexpected = model.load_state_dict(converted, strict=False, assign=True)
    if missing or unexpected:
        raise ModelError(f"Wan VAE weights do not fit: missing {list(missing)[:4]}, unexpected {list(unexpected)[:4]}",
                         where="VAELoader", fix=f"the file is not a complete Wan {'2.2' if wan22 else '2.1'} VAE")
    model = nn.Module.to(model, device=torch.device(device), dtype=dtype)
    model.eval().requires_grad_(False)
    return WanVAE(model)


class WanVAE(DeviceAndDtype, nn.Module):
    """VAEModel over diffusers' AutoencoderKLWan; 5-D latents, frames flattened into the image batch.

    Decode and encode run the network one causal chunk at a time with its feature caches, as ComfyUI
    and diffusers do (decode: 1 latent frame per call; encode: frame 0, then 4 frames per call), and
    move each chunk's output to the CPU as it comes: the device holds the weights, the caches and one
    chunk's activations, whatever the clip's length (`bench/wan.py` measures memory per frame)."""

    latent_channels = 16
    downscale = 8
    temporal_downscale = 4
    latent_dimensions = 3

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder
        self.latent_channels = int(autoencoder.config.z_dim)
        self.patch = int(autoencoder.config.patch_size or 1)           # Wan 2.2: 2x2 pixel patches
        self.downscale = 8 * self.patch

    def _caches(self, part: str) -> list:
        return [None] * self.autoencoder._cached_conv_counts[part]

    def _decode_chunks(self, z: torch.Tensor, write) -> None:
        """Decode (1, C, T, h, w) latent frame by latent frame; write(frame_index, (1, 3, n, H, W) in [-1, 1])."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        ae = self.autoencoder
        x = ae.post_quant_conv(z.to(self.device, self.dtype))             # 1x1x1: per frame, small
        cache, done = self._caches("decoder"), 0
        for i in range(x.shape[2]):
            out = ae.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0], first_chunk=(i == 0))
            if self.patch > 1:
                out = unpatchify(out, patch_size=self.patch)
            write(done, out.clamp(-1.0, 1.0).float().cpu())
            done += out.shape[2]

    def _decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) -> (B, 3, T', H, W) in [-1, 1], float32 on CPU."""
        b, _, t, h, w = z.shape
        out = torch.empty((b, 3, 1 + 4 * (t - 1), h * self.downscale, w * self.downscale))
        for i in range(b):
            def write(start, piece, i=i):
                out[i:i + 1, :, start:start + piece.shape[2]] = piece
            self._decode_chunks(z[i:i + 1], write)
        return out

    @staticmethod
    def _five_d(samples: torch.Tensor) -> torch.Tensor:
        return samples.unsqueeze(2) if samples.ndim == 4 else samples

    @staticmethod
    def _to_images(out: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B*T, H, W, 3) in [0, 1]."""
        img = ((out + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)          # (B, T, H, W, 3)
        return img.reshape(-1, *img.shape[2:]).contiguous()

    @torch.no_grad()
    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        z = self._five_d(samples)
        b, _, t, h, w = z.shape
        frames = 1 + 4 * (t - 1)
        images = torch.empty((b * frames, h * self.downscale, w * self.downscale, 3))
        for i in range(b):                  # straight into the image batch: no second full-clip copy
            def write(start, piece, i=i):
                rows = slice(i * frames + start, i * frames + start + piece.shape[2])
                images[rows] = ((piece[0] + 1.0) / 2.0).clamp(0.0, 1.0).movedim(0, -1)
            self._decode_chunks(z[i:i + 1], write)
        return images

    @torch.no_grad()
    def decode_tiled(self, samples: torch.Tensor, tile_size: int = 512, overlap: int = 64) -> torch.Tensor:
        """VAEDecodeTiled: tile_size and overlap in pixels; spatial tiles, each over all frames."""
        from diffmesh.models.vae import feathered_tiles

        z = self._five_d(samples)
        b, c, t, h, w = z.shape
        frames = 1 + 4 * (t - 1)
        if tile_size < overlap * 4:
            overlap = tile_size // 4
        tile, ov = max(1, tile_size // self.downscale), overlap // self.downscale

        def decode_piece(piece: torch.Tensor) -> torch.Tensor:   # (1, C*T, th, tw) -> (1, 3*T', 8th, 8tw)
            out = self._decode_raw(piece.reshape(1, c, t, *piece.shape[-2:]))
            return out.reshape(1, 3 * frames, *out.shape[-2:])

        flat = feathered_tiles(z.reshape(b, c * t, h, w), decode_piece, (tile, tile), ov, self.downscale, 3 * frames)
        return self._to_images(flat.reshape(b, 3, frames, *flat.shape[-2:]))

    def crop_to_scale(self, pixels: torch.Tensor) -> torch.Tensor:
        from diffmesh.models.vae import crop_to_multiple

        return crop_to_multiple(pixels, self.downscale)        # centred, as ComfyUI

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frames (N, H, W, 3) of one video -> latent mean (1, C, 1 + (N-1)//4, H/d, W/d), d = 8 (16 for
        Wan 2.2); frames go to the device one causal chunk at a time (1, then 4 each)."""
        from diffusers.models.autoencoders.autoencoder_kl_wan import patchify

        pixels = self.crop_to_scale(pixels)
        ae, cache, outs = self.autoencoder, self._caches("encoder"), []
        n = pixels.shape[0]
        for i in range(1 + (n - 1) // 4):
            rows = slice(0, 1) if i == 0 else slice(1 + 4 * (i - 1), 1 + 4 * i)
            video = pixels[rows, ..., :3].movedim(-1, 0).unsqueeze(0)       # (1, 3, n, H, W): images are frames
            video = video.to(self.device, self.dtype) * 2.0 - 1.0
            if self.patch > 1:
                video = patchify(video, patch_size=self.patch)
            outs.append(ae.encoder(video, feat_cache=cache, feat_idx=[0]))
        moments = ae.quant_conv(torch.cat(outs, dim=2))
        return moments[:, :self.latent_channels].float().cpu()
