"""Video nodes with ComfyUI's schemas: the empty video latent, animated WEBP/PNG, and the VIDEO path
(CreateVideo -> SaveVideo as MP4/H.264 through PyAV, GetVideoComponents).

A VIDEO value is a `Video` (frames (T, H, W, 3) in 0..1, frame rate, optional AUDIO dict): plain
data, so it crosses worker processes like an IMAGE. Saved files go to the output folder under
ComfyUI's names (`<prefix>_00001_.mp4`) and are reported as ComfyUI's PreviewVideo does
(`{"images": [...], "animated": [true]}`), which the frontend shows as a video.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from diffmesh.nodes.base import SAVE_HIDDEN, NodeContext, NodeDef, NodeSchema, OutputSpec, combo, inp
from diffmesh.nodes.io import metadata_texts, save_path, write_new_file

MAX_RESOLUTION = 16384
WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
VIDEO_FORMATS = ("auto", "mp4")
VIDEO_CODECS = ("auto", "h264")
PREFIX_TOOLTIP = ("The prefix for the file to save. This may include formatting information such as "
                  "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes.")


@dataclass
class Video:
    """ComfyUI's VideoFromComponents: frames (T, H, W, C) float 0..1, frames per second, AUDIO or None."""

    images: torch.Tensor
    frame_rate: Fraction
    audio: dict | None = None

    def get_dimensions(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])


# ---------------------------------------------------------------- latents

def empty_video_latent(ctx: NodeContext, width: int, height: int, length: int, batch_size: int = 1):
    """The Wan/HunyuanVideo latent: 16 channels, 1 + (length - 1) // 4 frames (the VAE's 4x time stride)."""
    return ({"samples": torch.zeros([batch_size, 16, ((length - 1) // 4) + 1, height // 8, width // 8])},)


def wan_image_to_video(ctx: NodeContext, positive, negative, vae, width: int, height: int, length: int,
                       batch_size: int, clip_vision_output=None, start_image=None):
    """WanImageToVideo: the empty video latent, and on both conditionings the VAE latent of the start
    frames (the rest of the clip grey 0.5) with a mask that is 0 on the latent frames they cover."""
    from diffmesh.nodes.conditioning import set_values
    from diffmesh.nodes.image import common_upscale

    latent = empty_video_latent(ctx, width, height, length, batch_size)[0]
    if start_image is not None:
        start = common_upscale(start_image[:length].movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
        image = torch.full((length, height, width, start.shape[-1]), 0.5, dtype=start.dtype)
        image[:start.shape[0]] = start
        concat = ctx.engine.vae_encode(vae, image[..., :3])                          # (1, 16, T, h, w)
        mask = torch.ones((1, 1, latent["samples"].shape[2], concat.shape[-2], concat.shape[-1]))
        mask[:, :, :((start.shape[0] - 1) // 4) + 1] = 0.0
        values = {"concat_latent_image": concat, "concat_mask": mask}
        positive, negative = set_values(positive, values), set_values(negative, values)
    if clip_vision_output is not None:
        values = {"clip_vision_output": clip_vision_output}
        positive, negative = set_values(positive, values), set_values(negative, values)
    return (positive, negative, latent)


def wan22_image_to_video_latent(ctx: NodeContext, vae, width: int, height: int, length: int, batch_size: int,
                                start_image=None):
    """Wan22ImageToVideoLatent (Wan 2.2 TI2V 5B): the 48-channel latent (16x spatial). With a start image,
    its VAE latent fills the first latent frames and `noise_mask` is 0 there: the sampler keeps those
    frames and the model sees them at timestep 0 (per-frame timesteps, `models.dit.wan22`)."""
    from diffmesh.nodes.image import common_upscale
    from diffmesh.sampling.latent_formats import for_family

    frames = ((length - 1) // 4) + 1
    latent = torch.zeros([1, 48, frames, height // 16, width // 16])
    if start_image is None:
        return ({"samples": latent.repeat((batch_size, 1, 1, 1, 1))},)
    start = common_upscale(start_image[:length].movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
    encoded = ctx.engine.vae_encode(vae, start[..., :3])                              # (1, 48, t, h, w)
    if encoded.shape[1] != latent.shape[1]:
        raise ValueError(f"Wan22ImageToVideoLatent: the VAE gives {encoded.shape[1]}-channel latents; "
                         "connect the Wan 2.2 VAE (wan2.2_vae.safetensors), whose latents have 48 channels")
    latent[:, :, :encoded.shape[2]] = encoded
    mask = torch.ones([1, 1, frames, latent.shape[-2], latent.shape[-1]])
    mask[:, :, :encoded.shape[2]] = 0.0
    # as ComfyUI: frames still to generate hold the latent format's mean (process_out of zeros)
    latent = for_family("wan22").process_out(latent) * mask + latent * (1.0 - mask)
    return ({"samples": latent.repeat((batch_size, 1, 1, 1, 1)),
             "noise_mask": mask.repeat((batch_size, 1, 1, 1, 1))},)


# ---------------------------------------------------------------- animated images

def _pil_frames(images: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)) for image in images]


def _saved(ctx: NodeContext, images: torch.Tensor, filename_prefix: str, extension: str, write) -> dict:
    folder, stem, counter, subfolder = save_path(filename_prefix, ctx.paths.type_dir("output"),
                                                 images[0].shape[1], images[0].shape[0])
    name, _ = write_new_file(folder, lambda c: f"{stem}_{c:05}_.{extension}", counter, write)
    return {"filename": name, "subfolder": subfolder, "type": "output"}


def save_animated_webp(ctx: NodeContext, images, filename_prefix: str, fps: float, lossless: bool, quality: int,
                       method: str, prompt=None, extra_pnginfo=None):
    frames = _pil_frames(images)
    exif = frames[0].getexif()
    texts = metadata_texts(ctx, prompt, None)
    if texts is not None:                 # ComfyUI's EXIF tags: 0x0110 the prompt, 0x010f downwards the rest
        if prompt is not None:
            exif[0x0110] = "prompt:" + texts["prompt"]
        for offset, (key, value) in enumerate((extra_pnginfo or {}).items()):
            exif[0x010F - offset] = f"{key}:{json.dumps(value)}"
    saved = _saved(ctx, images, filename_prefix, "webp", lambda f: frames[0].save(
        f, format="WEBP", save_all=True, duration=int(1000.0 / fps), append_images=frames[1:], exif=exif,
        lossless=lossless, quality=quality, method=WEBP_METHODS[method]))
    return {"ui": {"images": [saved], "animated": (len(frames) != 1,)}, "result": (images,)}


def save_animated_png(ctx: NodeContext, images, filename_prefix: str, fps: float, compress_level: int,
                      prompt=None, extra_pnginfo=None):
    from PIL.PngImagePlugin import PngInfo

    frames = _pil_frames(images)
    info = None
    if metadata_texts(ctx, prompt, extra_pnginfo) is not None:
        info = PngInfo()                  # ComfyUI's private "comf" chunks after the image data: key NUL json
        items = ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items())
        for key, value in items:
            info.add(b"comf", key.encode("latin-1", "strict") + b"\0" +
                     json.dumps(value).encode("latin-1", "strict"), after_idat=True)
    saved = _saved(ctx, images, filename_prefix, "png", lambda f: frames[0].save(
        f, format="PNG", pnginfo=info, compress_level=compress_level, save_all=True,
        duration=int(1000.0 / fps), append_images=frames[1:]))
    return {"ui": {"images": [saved], "animated": (True,)}, "result": (images,)}


# ---------------------------------------------------------------- VIDEO

def create_video(ctx: NodeContext, images, fps: float, audio=None):
    return (Video(images, Fraction(fps), audio),)


def get_video_components(ctx: NodeContext, video: Video):
    return (video.images, video.audio, float(video.frame_rate))


def write_mp4(video: Video, handle, metadata: dict | None) -> None:
    """H.264 (yuv420p) in MP4 at the frame rate rounded to 1/1000, metadata as JSON tags; AAC audio
    cut to the video's length (ComfyUI's VideoFromComponents.save_to)."""
    import av

    width, height = video.get_dimensions()
    if width % 2 or height % 2:
        raise ValueError(f"H.264 in yuv420p needs an even width and height, got {width}x{height}: "
                         "crop or scale the images to even sizes before CreateVideo")
    rate = Fraction(round(video.frame_rate * 1000), 1000)
    with av.open(handle, mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as output:
        for key, value in (metadata or {}).items():
            output.metadata[key] = json.dumps(value)
        stream = output.add_stream("h264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        audio_stream = None
        if video.audio:
            sample_rate = int(video.audio["sample_rate"])
            audio_stream = output.add_stream("aac", rate=sample_rate)
        for frame in video.images:
            pixels = (frame[..., :3] * 255).clamp(0, 255).byte().cpu().numpy()          # (H, W, 3)
            output.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")))
        output.mux(stream.encode(None))
        if audio_stream is not None:
            waveform = video.audio["waveform"]                                          # (B, channels, samples)
            waveform = waveform[:, :, :math.ceil(sample_rate / rate * video.images.shape[0])]
            frame = av.AudioFrame.from_ndarray(waveform.movedim(2, 1).reshape(1, -1).float().numpy(), format="flt",
                                               layout="mono" if waveform.shape[1] == 1 else "stereo")
            frame.sample_rate, frame.pts = sample_rate, 0
            output.mux(audio_stream.encode(frame))
            output.mux(audio_stream.encode(None))


def save_video(ctx: NodeContext, video: Video, filename_prefix: str, format: str, codec: str,  # noqa: A002
               prompt=None, extra_pnginfo=None):
    metadata: dict[str, Any] | None = None
    if metadata_texts(ctx, prompt, extra_pnginfo) is not None:
        metadata = dict(extra_pnginfo or {})
        if prompt is not None:
            metadata["prompt"] = prompt
        metadata = metadata or None
    width, height = video.get_dimensions()
    folder, stem, counter, subfolder = save_path(filename_prefix, ctx.paths.type_dir("output"), width, height)
    name, _ = write_new_file(folder, lambda c: f"{stem}_{c:05}_.mp4", counter,
                             lambda f: write_mp4(video, f, metadata))
    return {"ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": (True,)},
            "result": (video,)}


IMAGES = "comfy_extras.nodes_images"
VIDEO = "comfy_extras.nodes_video"

NODES = (
    NodeDef(NodeSchema(
        name="EmptyHunyuanLatentVideo", display_name="Empty HunyuanVideo 1.0 Latent", category="latent/video",
        description="Generates an empty latent tensor configured for HunyuanVideo 1.0 video generation workflows.",
        search_aliases=("empty latent video", "hunyuan video latent", "hunyuan 1.0 latent"),
        inputs=(inp("width", "INT", default=848, min=16, max=MAX_RESOLUTION, step=16,
                    tooltip="Width of the target video in pixels."),
                inp("height", "INT", default=480, min=16, max=MAX_RESOLUTION, step=16,
                    tooltip="Height of the target video in pixels."),
                inp("length", "INT", default=25, min=1, max=MAX_RESOLUTION, step=4,
                    tooltip="Number of frames for the video generation."),
                inp("batch_size", "INT", default=1, min=1, max=4096,
                    tooltip="Number of video latent samples in the batch.")),
        outputs=(OutputSpec("LATENT"),), python_module="comfy_extras.nodes_hunyuan"), empty_video_latent),
    NodeDef(NodeSchema(
        name="WanImageToVideo", display_name="WanImageToVideo", category="conditioning/video_models",
        inputs=(inp("positive", "CONDITIONING"), inp("negative", "CONDITIONING"), inp("vae", "VAE"),
                inp("width", "INT", default=832, min=16, max=MAX_RESOLUTION, step=16),
                inp("height", "INT", default=480, min=16, max=MAX_RESOLUTION, step=16),
                inp("length", "INT", default=81, min=1, max=MAX_RESOLUTION, step=4),
                inp("batch_size", "INT", default=1, min=1, max=4096),
                inp("clip_vision_output", "CLIP_VISION_OUTPUT", section="optional"),
                inp("start_image", "IMAGE", section="optional")),
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative"),
                 OutputSpec("LATENT", "latent")), python_module="comfy_extras.nodes_wan"), wan_image_to_video),
    NodeDef(NodeSchema(
        name="Wan22ImageToVideoLatent", display_name="Wan22ImageToVideoLatent", category="conditioning/inpaint",
        inputs=(inp("vae", "VAE"),
                inp("width", "INT", default=1280, min=32, max=MAX_RESOLUTION, step=32),
                inp("height", "INT", default=704, min=32, max=MAX_RESOLUTION, step=32),
                inp("length", "INT", default=49, min=1, max=MAX_RESOLUTION, step=4),
                inp("batch_size", "INT", default=1, min=1, max=4096),
                inp("start_image", "IMAGE", section="optional")),
        outputs=(OutputSpec("LATENT"),), python_module="comfy_extras.nodes_wan"), wan22_image_to_video_latent),
    NodeDef(NodeSchema(
        name="SaveAnimatedWEBP", display_name="Save Animated WEBP", category="image",
        inputs=(inp("images", "IMAGE"), inp("filename_prefix", "STRING", default="ComfyUI"),
                inp("fps", "FLOAT", default=6.0, min=0.01, max=1000.0, step=0.01),
                inp("lossless", "BOOLEAN", default=True), inp("quality", "INT", default=80, min=0, max=100),
                combo("method", tuple(WEBP_METHODS))),
        outputs=(OutputSpec("IMAGE", "images"),), hidden=SAVE_HIDDEN, output_node=True, python_module=IMAGES),
        save_animated_webp),
    NodeDef(NodeSchema(
        name="SaveAnimatedPNG", display_name="Save Animated PNG", category="image",
        inputs=(inp("images", "IMAGE"), inp("filename_prefix", "STRING", default="ComfyUI"),
                inp("fps", "FLOAT", default=6.0, min=0.01, max=1000.0, step=0.01),
                inp("compress_level", "INT", default=4, min=0, max=9, advanced=True)),
        outputs=(OutputSpec("IMAGE", "images"),), hidden=SAVE_HIDDEN, output_node=True, python_module=IMAGES),
        save_animated_png),
    NodeDef(NodeSchema(
        name="SaveVideo", display_name="Save Video", category="video", essentials_category="Basics",
        description="Saves the input videos to your ComfyUI output directory.", search_aliases=("export video",),
        inputs=(inp("video", "VIDEO", tooltip="The video to save."),
                inp("filename_prefix", "STRING", default="video/ComfyUI", tooltip=PREFIX_TOOLTIP),
                combo("format", VIDEO_FORMATS, default="auto", tooltip="The format to save the video as."),
                combo("codec", VIDEO_CODECS, default="auto", tooltip="The codec to use for the video.")),
        outputs=(OutputSpec("VIDEO", "video"),), hidden=SAVE_HIDDEN, output_node=True, python_module=VIDEO),
        save_video),
    NodeDef(NodeSchema(
        name="CreateVideo", display_name="Create Video", category="video", essentials_category="Video Tools",
        description="Create a video from images.", search_aliases=("images to video",),
        inputs=(inp("images", "IMAGE", tooltip="The images to create a video from."),
                inp("fps", "FLOAT", default=30.0, min=1.0, max=120.0, step=1.0),
                inp("audio", "AUDIO", section="optional", tooltip="The audio to add to the video.")),
        outputs=(OutputSpec("VIDEO"),), python_module=VIDEO), create_video),
    NodeDef(NodeSchema(
        name="GetVideoComponents", display_name="Get Video Components", category="video",
        description="Extracts video frames, audio and frame rate.",
        search_aliases=("extract frames", "split video", "video to images", "demux"),
        inputs=(inp("video", "VIDEO", tooltip="The video to extract components from."),),
        outputs=(OutputSpec("IMAGE", "images"), OutputSpec("AUDIO", "audio"), OutputSpec("FLOAT", "fps")),
        python_module=VIDEO), get_video_components),
)
