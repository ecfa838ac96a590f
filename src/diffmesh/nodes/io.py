"""File nodes: load/save images and latents with ComfyUI's names, counters and metadata (spec §6.10)."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from diffmesh.config.paths import UnsafePath, safe_join, split_annotation
from diffmesh.nodes.base import SAVE_HIDDEN, NodeContext, NodeDef, NodeSchema, SchemaEnv, combo, inp, out

TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"          # sic: ComfyUI's alphabet (no 'w')


# -- paths -------------------------------------------------------------------------------------

def annotated_path(paths, name: str, default: str = "input") -> Path:
    """`name` may end in " [output]", " [input]" or " [temp]", which picks the folder. A name that
    would leave that folder (absolute, `..`, a symlink pointing out) raises `UnsafePath`: a prompt
    must not be able to read arbitrary files of the server's machine into an image."""
    name, kind = split_annotation(name, default)
    return safe_join(paths.type_dir(kind), name)


def _valid_file(paths, name: str, what: str):
    try:
        found = annotated_path(paths, name).is_file()
    except UnsafePath as exc:
        return f"Invalid {what} file: {exc}"
    return True if found else f"Invalid {what} file: {name}"


def input_files(env: SchemaEnv, accept) -> list[str]:
    folder = Path(env.paths.input_dir)
    if not folder.is_dir():
        return []
    return sorted(f.name for f in folder.iterdir() if f.is_file() and accept(f.name))


def is_image_file(name: str) -> bool:
    kind = mimetypes.guess_type(name)[0]
    return kind is not None and kind.startswith("image/")


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def substitute_tokens(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    tokens = {"%width%": str(width), "%height%": str(height), "%year%": str(now.tm_year),
              "%month%": f"{now.tm_mon:02d}", "%day%": f"{now.tm_mday:02d}", "%hour%": f"{now.tm_hour:02d}",
              "%minute%": f"{now.tm_min:02d}", "%second%": f"{now.tm_sec:02d}"}
    for token, value in tokens.items():
        prefix = prefix.replace(token, value)
    return prefix


def save_path(prefix: str, output_dir: Path, width: int = 0, height: int = 0) -> tuple[Path, str, int, str]:
    """(folder, file stem, next counter, subfolder) for `prefix`, as ComfyUI names saved files. The
    counter is where the search for a free name starts; `create_exclusive` takes the name."""
    prefix = substitute_tokens(prefix, width, height)
    subfolder, stem = os.path.split(os.path.normpath(prefix))
    output_dir = Path(output_dir).resolve()
    folder = (output_dir / subfolder).resolve()
    if os.path.commonpath((str(output_dir), str(folder))) != str(output_dir):
        raise ValueError(f"Saving image outside the output folder is not allowed. full_output_folder: {folder}, "
                         f"output_dir: {output_dir} (remove '..' or absolute paths from filename_prefix)")
    counter = 1
    if folder.is_dir():
        numbers = []
        for name in os.listdir(folder):
            head = name[: len(stem) + 1]
            if os.path.normcase(head[:-1]) != os.path.normcase(stem) or head[-1:] != "_":
                continue
            try:
                numbers.append(int(name[len(stem) + 1:].split("_")[0]))
            except ValueError:
                numbers.append(0)
        counter = max(numbers, default=0) + 1
    else:
        folder.mkdir(parents=True, exist_ok=True)
    return folder, stem, counter, subfolder


def create_exclusive(folder: Path, name_for, counter: int) -> tuple[int, str, int]:
    """(open fd, file name, counter used) of a new file `name_for(counter)`, taking the next counter
    while the name exists. O_EXCL makes choosing a name and taking it one step: the folder scan of
    `save_path` is only a starting point, since another prompt (another worker's thread, or another
    process on this output folder) may take the same counter between the scan and the write."""
    while True:
        name = name_for(counter)
        try:
            return os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), name, counter
        except FileExistsError:
            counter += 1
        except IsADirectoryError:        # some systems report a folder of that name this way
            counter += 1


def write_new_file(folder: Path, name_for, counter: int, write) -> tuple[str, int]:
    """Create the first free `name_for(counter…)` exclusively and fill it with `write(file)`;
    returns (name, counter used). A failed write removes the partial file."""
    fd, name, counter = create_exclusive(folder, name_for, counter)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
    except BaseException:
        (folder / name).unlink(missing_ok=True)
        raise
    return name, counter


def metadata_texts(ctx: NodeContext, prompt, extra_pnginfo) -> dict[str, str] | None:
    if ctx.options.get("disable_metadata"):
        return None
    texts = {}
    if prompt is not None:
        texts["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        texts[key] = json.dumps(value)
    return texts


# -- images ------------------------------------------------------------------------------------

def save_images(ctx: NodeContext, images: torch.Tensor, filename_prefix: str, kind: str, compress_level: int,
                prompt=None, extra_pnginfo=None) -> dict:
    folder, stem, counter, subfolder = save_path(filename_prefix, ctx.paths.type_dir(kind),
                                                 images[0].shape[1], images[0].shape[0])
    texts = metadata_texts(ctx, prompt, extra_pnginfo)
    results = []
    for batch_number, image in enumerate(images):
        pixels = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)    # truncation, as ComfyUI
        info = None
        if texts is not None:
            info = PngInfo()
            for key, text in texts.items():
                info.add_text(key, text)
        batch_stem = stem.replace('%batch_num%', str(batch_number))
        name, counter = write_new_file(
            folder, lambda c: f"{batch_stem}_{c:05}_.png", counter,
            lambda f: Image.fromarray(pixels).save(f, format="PNG", pnginfo=info, compress_level=compress_level))
        results.append({"filename": name, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"ui": {"images": results}}


def save_image(ctx: NodeContext, images, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None):
    return save_images(ctx, images, filename_prefix, "output", 4, prompt, extra_pnginfo)


def preview_image(ctx: NodeContext, images, prompt=None, extra_pnginfo=None):
    suffix = ctx.state.setdefault("prefix_append", "_temp_" + "".join(random.choice(TEMP_LETTERS) for _ in range(5)))
    return save_images(ctx, images, "ComfyUI" + suffix, "temp", 1, prompt, extra_pnginfo)


def load_image(ctx: NodeContext, image: str):
    img = Image.open(annotated_path(ctx.paths, image))
    images, masks, size = [], [], None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        size = size or rgb.size
        if rgb.size != size:
            continue
        images.append(torch.from_numpy(np.array(rgb).astype(np.float32) / 255.0)[None])        # (1,H,W,3)
        if "A" in frame.getbands() or (frame.mode == "P" and "transparency" in frame.info):
            alpha = np.array(frame.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0
            masks.append((1.0 - torch.from_numpy(alpha))[None])
        else:
            masks.append(torch.zeros((1, 64, 64), dtype=torch.float32))
        if img.format == "MPO":
            break
    return (torch.cat(images, 0), torch.cat(masks, 0))


def load_image_changed(paths, image: str) -> str:
    return file_sha256(annotated_path(paths, image))


def load_image_valid(paths, image: str):
    return _valid_file(paths, image, "image")


# -- latents -----------------------------------------------------------------------------------

def save_latent(ctx: NodeContext, samples: dict, filename_prefix: str = "ComfyUI", prompt=None, extra_pnginfo=None):
    from safetensors.torch import save

    folder, stem, counter, subfolder = save_path(filename_prefix, ctx.paths.type_dir("output"))
    texts = metadata_texts(ctx, prompt, extra_pnginfo)
    if texts is not None and "prompt" not in texts:
        texts["prompt"] = ""
    tensors = {"latent_tensor": samples["samples"].contiguous(), "latent_format_version_0": torch.tensor([])}
    data = save(tensors, metadata=texts)
    name, _ = write_new_file(folder, lambda c: f"{stem}_{c:05}_.latent", counter, lambda f: f.write(data))
    return {"ui": {"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


def load_latent(ctx: NodeContext, latent: str):
    from safetensors.torch import load_file

    data = load_file(str(annotated_path(ctx.paths, latent)), device="cpu")
    # Files written before the format version key hold scaled latents.
    multiplier = 1.0 if "latent_format_version_0" in data else 1.0 / 0.18215
    return ({"samples": data["latent_tensor"].float() * multiplier},)


def load_latent_changed(paths, latent: str) -> str:
    return file_sha256(annotated_path(paths, latent))


def load_latent_valid(paths, latent: str):
    return _valid_file(paths, latent, "latent")


SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."

NODES = (
    NodeDef(NodeSchema(
        name="SaveImage", display_name="Save Image", category="image", description=SAVE_DESCRIPTION,
        inputs=(inp("images", "IMAGE", tooltip="The images to save."),
                inp("filename_prefix", "STRING", default="ComfyUI", tooltip=(
                    "The prefix for the file to save. This may include formatting information such as "
                    "%date:yyyy-MM-dd% or %Empty Latent Image.width% to include values from nodes."))),
        hidden=SAVE_HIDDEN, output_node=True), save_image),
    NodeDef(NodeSchema(
        name="PreviewImage", display_name="Preview Image", category="image", description=SAVE_DESCRIPTION,
        inputs=(inp("images", "IMAGE"),), hidden=SAVE_HIDDEN, output_node=True), preview_image),
    NodeDef(NodeSchema(
        name="LoadImage", display_name="Load Image", category="image",
        inputs=(combo("image", lambda env: input_files(env, is_image_file), image_upload=True),),
        outputs=out("IMAGE", "MASK")),
        load_image, is_changed=load_image_changed, validate_inputs=load_image_valid),
    NodeDef(NodeSchema(
        name="SaveLatent", display_name="SaveLatent", category="_for_testing",
        inputs=(inp("samples", "LATENT"), inp("filename_prefix", "STRING", default="latents/ComfyUI")),
        hidden=SAVE_HIDDEN, output_node=True), save_latent),
    NodeDef(NodeSchema(
        name="LoadLatent", display_name="LoadLatent", category="_for_testing",
        inputs=(combo("latent", lambda env: input_files(env, lambda n: n.endswith(".latent"))),),
        outputs=out("LATENT")),
        load_latent, is_changed=load_latent_changed, validate_inputs=load_latent_valid),
)
