"""Image nodes of ComfyUI's comfy_extras (nodes_images.py, nodes_post_processing.py's Batch Images)
with ComfyUI's names, inputs, defaults and maths: Get Image Size, Get Image from Batch, Repeat Image
Batch, Add Noise to Image, Crop Image, Rotate Image, Flip Image, Scale Image to Max Dimension, Batch
Images (any number of inputs) and Save Image (Advanced) (PNG 8/16-bit or 32-bit float EXR, written
with PyAV's encoders as ComfyUI does, prompt and workflow as PNG text chunks / EXR string attributes).
IMAGE is (B,H,W,C) float in [0,1].
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction

import numpy as np
import torch

from diffmesh.nodes.base import SAVE_HIDDEN, NodeContext
from diffmesh.nodes.dynamic_inputs import autogrow, dynamic_combo, nest
from diffmesh.nodes.extras_base import MAX_RESOLUTION, choice, outs, text, v3, v3_node
from diffmesh.nodes.image import common_upscale
from diffmesh.nodes.io import metadata_texts, save_path, write_new_file

IMAGES = "comfy_extras.nodes_images"
ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]
FLIPS = ["x-axis: vertically", "y-axis: horizontally"]
# (format, bit depth, channels) -> (scale, numpy dtype, frame pixel format, stream pixel format)
ENCODINGS = {
    ("png", "8-bit", 1): (255.0, np.uint8, "gray", "gray"),
    ("png", "8-bit", 3): (255.0, np.uint8, "rgb24", "rgb24"),
    ("png", "8-bit", 4): (255.0, np.uint8, "rgba", "rgba"),
    ("png", "16-bit", 1): (65535.0, np.uint16, "gray16le", "gray16be"),
    ("png", "16-bit", 3): (65535.0, np.uint16, "rgb48le", "rgb48be"),
    ("png", "16-bit", 4): (65535.0, np.uint16, "rgba64le", "rgba64be"),
    ("exr", "32-bit float", 1): (1.0, np.float32, "grayf32le", "grayf32le"),
    ("exr", "32-bit float", 3): (1.0, np.float32, "gbrpf32le", "gbrpf32le"),
    ("exr", "32-bit float", 4): (1.0, np.float32, "gbrapf32le", "gbrapf32le"),
}


def get_image_size(ctx: NodeContext, image: torch.Tensor, unique_id=None):
    return (image.shape[2], image.shape[1], image.shape[0])


def image_from_batch(ctx: NodeContext, image: torch.Tensor, batch_index: int, length: int):
    if batch_index < 0:
        batch_index += image.shape[0]
    batch_index = max(0, min(image.shape[0] - 1, batch_index))
    length = min(image.shape[0] - batch_index, length)
    return (image[batch_index:batch_index + length].clone(),)


def repeat_image_batch(ctx: NodeContext, image: torch.Tensor, amount: int):
    return (image.repeat((amount, 1, 1, 1)),)


def image_add_noise(ctx: NodeContext, image: torch.Tensor, seed: int, strength: float):
    noise = torch.randn(image.size(), generator=torch.manual_seed(seed), device="cpu").to(image)
    return (torch.clip(image + strength * noise, min=0.0, max=1.0),)


def image_crop(ctx: NodeContext, image: torch.Tensor, width: int, height: int, x: int, y: int):
    x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
    return (image[:, y:y + height, x:x + width, :],)


def image_rotate(ctx: NodeContext, image: torch.Tensor, rotation: str):
    turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
    return (torch.rot90(image, k=turns, dims=[2, 1]),)


def image_flip(ctx: NodeContext, image: torch.Tensor, flip_method: str):
    axis = 1 if flip_method.startswith("x") else 2 if flip_method.startswith("y") else None
    return (image if axis is None else torch.flip(image, dims=[axis]),)


def scale_to_max_dimension(ctx: NodeContext, image: torch.Tensor, upscale_method: str, largest_size: int):
    height, width = image.shape[1], image.shape[2]
    if height > width:
        width, height = round(width / height * largest_size), largest_size
    elif width > height:
        width, height = largest_size, round(height / width * largest_size)
    else:
        width = height = largest_size
    return (common_upscale(image.movedim(-1, 1), width, height, upscale_method, "disabled").movedim(1, -1),)


def batch_images(images: list[torch.Tensor]) -> torch.Tensor | None:
    """ComfyUI's batch_images: images with fewer channels padded with a 1.0 channel (alpha), then
    every image resized (bilinear, center crop) to the first one's size."""
    if not images:
        return None
    channels = max(image.shape[-1] for image in images)
    padded = [torch.nn.functional.pad(i, (0, 1), value=1.0) if i.shape[-1] < channels else i for i in images]
    first = padded[0].shape
    resized = [i if i.shape[1:] == first[1:] else
               common_upscale(i.movedim(-1, 1), first[2], first[1], "bilinear", "center").movedim(1, -1)
               for i in padded]
    return torch.cat(resized, dim=0)


def batch_images_node(ctx: NodeContext, **inputs):
    grown = nest(inputs, "images")["images"]
    order = sorted(grown, key=lambda name: int(name.removeprefix("image")))   # image0, image1, ..., image10
    return (batch_images([grown[name] for name in order]),)


# -- Save Image (Advanced) ------------------------------------------------------------------------

def srgb_to_linear(t: torch.Tensor) -> torch.Tensor:
    """Inverse sRGB transfer function (IEC 61966-2-1) on RGB; alpha passes through."""
    if t.shape[-1] == 4:
        return torch.cat([srgb_to_linear(t[..., :3]), t[..., 3:]], dim=-1)
    return torch.where(t <= 0.04045, t / 12.92, ((t.clamp(min=0.0) + 0.055) / 1.055) ** 2.4)


def hlg_to_linear(t: torch.Tensor) -> torch.Tensor:
    """Inverse HLG OETF (ITU-R BT.2100) to scene-linear light on RGB; alpha passes through."""
    if t.shape[-1] == 4:
        return torch.cat([hlg_to_linear(t[..., :3]), t[..., 3:]], dim=-1)
    a, b, c = 0.17883277, 0.28466892, 0.55991072928
    return torch.where(t <= 0.5, t ** 2 / 3.0, (torch.exp((t.clamp(min=0.5) - c) / a) + b) / 12.0)


def encode_image(image: torch.Tensor, file_format: str, bit_depth: str, colorspace: str) -> bytes:
    """One (H,W,C) or (H,W) image as PNG or EXR bytes (EXR scene-linear per `colorspace`)."""
    import av

    if image.ndim == 2:
        image = image.unsqueeze(-1)
    height, width, channels = image.shape
    spec = ENCODINGS.get((file_format, bit_depth, channels))
    if spec is None:
        raise ValueError(f"Save Image (Advanced): no {file_format}/{bit_depth} encoder for {channels}-channel images; "
                         "pass an image with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels")
    scale, dtype, frame_format, stream_format = spec
    if dtype == np.float32:
        converted = {"sRGB": srgb_to_linear, "HDR": hlg_to_linear}.get(colorspace, lambda t: t)(image)
        array = converted.cpu().numpy().astype(np.float32)
    else:
        array = (image * scale).clamp(0, scale).to(torch.int32).cpu().numpy().astype(dtype)
    codec = av.CodecContext.create(file_format, "w")
    codec.width, codec.height, codec.pix_fmt = width, height, stream_format
    codec.time_base = Fraction(1, 1)
    frame = av.VideoFrame.from_ndarray(array, format=frame_format)
    if frame_format != stream_format:
        frame = frame.reformat(format=stream_format)
    frame.pts = 0
    return b"".join(bytes(p) for p in list(codec.encode(frame)) + list(codec.encode(None)))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_text(png: bytes, texts: dict[str, str]) -> bytes:
    """`png` with a tEXt chunk per entry right after IHDR (where ComfyUI puts prompt and workflow)."""
    if not texts:
        return png
    end = 8 + 8 + struct.unpack(">I", png[8:12])[0] + 4             # signature + IHDR chunk
    chunks = b"".join(_png_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace"))
                      for k, v in texts.items())
    return png[:end] + chunks + png[end:]


PRIMARIES = {"Rec.709": (0.64, 0.33, 0.30, 0.60, 0.15, 0.06, 0.3127, 0.3290),       # x,y of R,G,B,white (D65)
             "Rec.2020": (0.708, 0.292, 0.170, 0.797, 0.131, 0.046, 0.3127, 0.3290)}
EXR_BLOCK_LINES = {0: 1, 1: 1, 2: 1, 3: 16, 4: 32, 5: 16, 6: 32, 7: 32, 8: 256, 9: 256}   # by compression


def _exr_attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


def exr_with_attributes(exr: bytes, texts: dict[str, str], colorspace: str) -> bytes:
    """`exr` with a string attribute per entry and the chromaticities of `colorspace` added to its
    header; the chunk offset table (absolute offsets) moves by the bytes added."""
    blob = b"".join(_exr_attribute(k, "string", v.encode("utf-8")) for k, v in texts.items())
    gamut = "Rec.2020" if colorspace == "HDR" else "Rec.709"
    blob += _exr_attribute("chromaticities", "chromaticities", struct.pack("<8f", *PRIMARIES[gamut]))
    pos, window, compression = 8, None, 0
    while exr[pos] != 0:                                        # header attributes up to the null byte
        name_end = exr.index(b"\0", pos)
        type_end = exr.index(b"\0", name_end + 1)
        size = struct.unpack("<i", exr[type_end + 1:type_end + 5])[0]
        name, value = exr[pos:name_end], exr[type_end + 5:type_end + 5 + size]
        if name == b"dataWindow":
            window = struct.unpack("<iiii", value)
        elif name == b"compression":
            compression = value[0]
        pos = type_end + 5 + size
    if window is None:
        return exr
    lines = EXR_BLOCK_LINES.get(compression, 1)
    chunks = (window[3] - window[1] + lines) // lines
    table = pos + 1
    offsets = struct.unpack(f"<{chunks}Q", exr[table:table + 8 * chunks])
    moved = struct.pack(f"<{chunks}Q", *(o + len(blob) for o in offsets))
    return exr[:pos] + blob + exr[pos:table] + moved + exr[table + 8 * chunks:]


def save_image_advanced(ctx: NodeContext, images: torch.Tensor, filename_prefix: str, prompt=None,
                        extra_pnginfo=None, **dynamic):
    fmt = nest(dynamic, "format")["format"]
    file_format, bit_depth = fmt["format"], fmt["bit_depth"]
    colorspace = fmt.get("input_color_space", "sRGB")
    folder, stem, counter, subfolder = save_path(filename_prefix, ctx.paths.type_dir("output"),
                                                 images[0].shape[1], images[0].shape[0])
    texts = metadata_texts(ctx, prompt, extra_pnginfo)
    results = []
    for batch_number, image in enumerate(images):
        encoded = encode_image(image, file_format, bit_depth, colorspace)
        if texts is not None:
            encoded = (png_with_text(encoded, texts) if file_format == "png"
                       else exr_with_attributes(encoded, texts, colorspace))
        name_stem = stem.replace("%batch_num%", str(batch_number))
        name, counter = write_new_file(folder, lambda c: f"{name_stem}_{c:05}.{file_format}", counter,
                                       lambda f: f.write(encoded))
        results.append({"filename": name, "subfolder": subfolder, "type": "output"})
        counter += 1
    return {"ui": {"images": results}, "result": (images,)}


EXR_COLOR_TOOLTIP = (
    "Colorspace of the input tensor. The EXR is always written as scene-linear in the matching gamut.\n"
    "sRGB — input is sRGB-encoded Rec.709; the inverse sRGB EOTF is applied.\n"
    "HDR — input is HLG-encoded Rec.2020 (BT.2100); the inverse HLG OETF is applied to get scene-linear light.\n"
    "linear — input is already scene-linear (Rec.709 primaries); written through unchanged. "
    "Use this for renderer/compositor output.")


def _format_input():
    png = (choice("bit_depth", ["8-bit", "16-bit"], default="8-bit", advanced=True),
           choice("input_color_space", ["sRGB"], default="sRGB", advanced=True))
    exr = (choice("bit_depth", ["32-bit float"], default="32-bit float", advanced=True),
           choice("input_color_space", ["sRGB", "HDR", "linear"], default="sRGB", advanced=True,
                  tooltip=EXR_COLOR_TOOLTIP))
    return dynamic_combo("format", [("png", png), ("exr", exr)], tooltip="The file format in which to save the image.")


def _int(default: int, low: int, high: int = MAX_RESOLUTION, **extra) -> dict:
    return dict(extra, default=default, min=low, max=high, step=1)


NODES = (
    v3_node("GetImageSize", "Get Image Size", "image", (v3("image", "IMAGE"),),
            outs(("INT", "width"), ("INT", "height"), ("INT", "batch_size")), get_image_size, IMAGES,
            description="Returns width and height of the image, and passes it through unchanged.",
            hidden=(("unique_id", "UNIQUE_ID"),), search_aliases=("dimensions", "resolution", "image info")),
    v3_node("ImageFromBatch", "Get Image from Batch", "image/batch",
            (v3("image", "IMAGE"), v3("batch_index", "INT", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
             v3("length", "INT", default=1, min=1, max=4096)),
            outs("IMAGE"), image_from_batch, IMAGES,
            search_aliases=("select image", "pick from batch", "extract image")),
    v3_node("RepeatImageBatch", "Repeat Image Batch", "image/batch",
            (v3("image", "IMAGE"), v3("amount", "INT", default=1, min=1, max=4096)), outs("IMAGE"),
            repeat_image_batch, IMAGES, search_aliases=("duplicate image", "clone image")),
    v3_node("ImageAddNoise", "Add Noise to Image", "image/filters",
            (v3("image", "IMAGE"),
             v3("seed", "INT", tooltip="The random seed used for creating the noise.", default=0, min=0,
                max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
             v3("strength", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01)),
            outs("IMAGE"), image_add_noise, IMAGES, search_aliases=("film grain",)),
    v3_node("ImageCrop", "Crop Image (DEPRECATED)", "image/transform",
            (v3("image", "IMAGE"), v3("width", "INT", **_int(512, 1)), v3("height", "INT", **_int(512, 1)),
             v3("x", "INT", **_int(0, 0)), v3("y", "INT", **_int(0, 0))),
            outs("IMAGE"), image_crop, IMAGES, deprecated=True, essentials_category="Image Tools",
            search_aliases=("trim",)),
    v3_node("ImageRotate", "Rotate Image", "image/transform", (v3("image", "IMAGE"), choice("rotation", ROTATIONS)),
            outs("IMAGE"), image_rotate, IMAGES, essentials_category="Image Tools",
            search_aliases=("turn", "flip orientation")),
    v3_node("ImageFlip", "Flip Image", "image/transform", (v3("image", "IMAGE"), choice("flip_method", FLIPS)),
            outs("IMAGE"), image_flip, IMAGES, search_aliases=("mirror", "reflect")),
    v3_node("ImageScaleToMaxDimension", "Scale Image to Max Dimension", "image/upscaling",
            (v3("image", "IMAGE"),
             choice("upscale_method", ["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"]),
             v3("largest_size", "INT", **_int(512, 0))),
            outs("IMAGE"), scale_to_max_dimension, IMAGES),
    v3_node("BatchImagesNode", "Batch Images", "image/batch",
            (autogrow("images", v3("image", "IMAGE"), prefix="image", min=1, max=50),), outs("IMAGE"),
            batch_images_node, "comfy_extras.nodes_post_processing", essentials_category="Image Tools",
            search_aliases=("batch", "image batch", "batch images", "combine images", "merge images",
                            "stack images")),
    v3_node("SaveImageAdvanced", "Save Image (Advanced)", "image",
            (v3("images", "IMAGE", tooltip="The images to save."),
             text("filename_prefix", default="ComfyUI",
                  tooltip=("The prefix for the file to save. May include formatting tokens such as "
                           "%date:yyyy-MM-dd% or %Empty Latent Image.width%.")),
             _format_input()),
            outs(("IMAGE", "images")), save_image_advanced, IMAGES, output_node=True, hidden=SAVE_HIDDEN,
            description="Saves the input images to your ComfyUI output directory.", essentials_category="Basics",
            search_aliases=("save", "save image", "export image", "output image", "write image")),
)
