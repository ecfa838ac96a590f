"""Files: /view and /upload/image, /upload/mask (spec §1.2). Every path is resolved with
`safe_join`, so nothing is read or written outside the input, output and temp folders."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import mimetypes
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, Response

from diffmesh.config.paths import UnsafePath, safe_join, safe_name, split_annotation
from diffmesh.server.routes.common import fail, state

UNSAFE_TYPES = ("text/html", "text/javascript", "application/javascript", "text/css", "image/svg+xml")


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_route("/view", get_view, methods=["GET"])
    r.add_api_route("/upload/image", post_upload_image, methods=["POST"])
    r.add_api_route("/upload/mask", post_upload_mask, methods=["POST"])
    return r


def type_dir(paths, kind: str) -> Path:
    try:
        return paths.type_dir(kind)
    except KeyError:
        raise fail(400, "bad_request", f"unknown file type {kind!r}", "use type=output, input or temp") from None


async def get_view(request: Request):
    paths = state(request).paths
    q = request.query_params
    raw = q.get("filename")
    if not raw:
        raise fail(404, "not_found", "no filename given", "GET /view?filename=NAME&type=output&subfolder=")
    name, kind = split_annotation(raw, q.get("type") or "output")
    if name.startswith("/") or ".." in name:
        raise fail(400, "bad_request", f"file name {name!r} must be relative and free of '..'")
    root = type_dir(paths, kind)
    folder = safe_join(root, q.get("subfolder") or "")
    target = safe_join(folder, safe_name(name))
    if not target.is_file():
        raise fail(404, "not_found", f"no file {name!r} in {kind}/{q.get('subfolder') or ''}")
    preview, channel = q.get("preview"), q.get("channel") or "rgba"
    if preview or channel in ("rgb", "a"):
        body, media = await asyncio.to_thread(_reencode, target, preview, channel)
        return Response(body, media_type=media, headers={"Content-Disposition": content_disposition(target.name)})
    media = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if media in UNSAFE_TYPES:
        media = "application/octet-stream"
    return FileResponse(target, media_type=media, headers={"Content-Disposition": content_disposition(target.name)})


def content_disposition(name: str) -> str:
    """`filename="…"` as ComfyUI sends it, with an ASCII stand-in for what HTTP headers cannot carry
    (they are Latin-1; `猫.png` used to make the response fail), plus RFC 5987's `filename*`,
    which browsers prefer and which holds any name."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def os_error(exc: OSError, what: str):
    """The 4xx for a filesystem refusal: 409 when the name is taken by something of the other kind
    (a folder where a file goes, a file where a folder goes), else 400; never a 500."""
    conflict = isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError))
    reason = exc.strerror or type(exc).__name__
    return fail(409 if conflict else 400, "conflict" if conflict else "bad_request", f"{what}: {reason}",
                "a file and a folder share that name; choose another name or subfolder")


def _reencode(path: Path, preview: str | None, channel: str) -> tuple[bytes, str]:
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:
        raise fail(400, "bad_request", f"{path.name} is not an image that can be converted", str(exc)) from exc
    if channel == "rgb":
        image = image.convert("RGB")
    elif channel == "a":
        alpha = image.getchannel("A") if "A" in image.getbands() else Image.new("L", image.size, 255)
        image = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image.putalpha(alpha)
    out = io.BytesIO()
    if preview:
        fmt, _, quality = preview.partition(";")
        fmt = "jpeg" if fmt == "jpeg" and "a" not in channel else "webp"
        if fmt == "jpeg":
            image = image.convert("RGB")
        image.save(out, format=fmt.upper(), quality=int(quality) if quality.isdigit() else 90)
        return out.getvalue(), f"image/{fmt}"
    image.save(out, format="PNG")
    return out.getvalue(), "image/png"


async def _form(request: Request):
    try:
        return await request.form()
    except Exception as exc:  # a malformed multipart body
        raise fail(400, "bad_request", "the upload must be multipart/form-data", str(exc)) from exc


def _store(paths, data: bytes, filename: str, kind: str, subfolder: str, overwrite: bool) -> dict:
    """Writes `data` under the upload rules: same content → same name; else `stem (n).ext`."""
    root = type_dir(paths, kind)
    folder = safe_join(root, subfolder)
    name = safe_name(filename)
    folder.mkdir(parents=True, exist_ok=True)
    target = safe_join(folder, name)
    if not overwrite:
        stem, dot, ext = name.rpartition(".") if "." in name else (name, "", "")
        digest = hashlib.sha256(data).digest()
        n = 0
        while target.exists():
            if target.is_file() and hashlib.sha256(target.read_bytes()).digest() == digest:
                break
            n += 1
            name = f"{stem} ({n}){dot}{ext}"
            target = safe_join(folder, name)
    target.write_bytes(data)
    return {"name": name, "subfolder": subfolder, "type": kind}


async def _upload(request: Request, form, data: bytes | None = None) -> dict:
    upload = form.get("image")
    if upload is None or not getattr(upload, "filename", None):
        raise fail(400, "bad_request", "no file in form field 'image'", "send multipart field image=@file")
    if data is None:
        data = await upload.read()
    kind = form.get("type") or "input"
    subfolder = str(form.get("subfolder") or "")
    overwrite = str(form.get("overwrite") or "").lower() in ("true", "1")
    try:
        return await asyncio.to_thread(_store, state(request).paths, data, upload.filename, str(kind), subfolder,
                                       overwrite)
    except UnsafePath as exc:
        raise fail(400, "bad_request", str(exc), "upload names and subfolders must stay inside the folder") from exc
    except OSError as exc:
        raise os_error(exc, f"cannot store {upload.filename!r} in {kind}/{subfolder}") from None


async def post_upload_image(request: Request):
    return await _upload(request, await _form(request))


async def post_upload_mask(request: Request):
    form = await _form(request)
    upload = form.get("image")
    try:
        ref = json.loads(form.get("original_ref") or "")
        assert isinstance(ref, dict) and ref.get("filename")
    except (ValueError, AssertionError):
        raise fail(400, "bad_request", "original_ref must be JSON {filename, subfolder, type}") from None
    if upload is None or not getattr(upload, "filename", None):
        raise fail(400, "bad_request", "no file in form field 'image'")
    name, kind = split_annotation(str(ref["filename"]), str(ref.get("type") or "output"))
    original = safe_join(safe_join(type_dir(state(request).paths, kind), str(ref.get("subfolder") or "")),
                         safe_name(name))
    if not original.is_file():
        raise fail(404, "not_found", f"original image {name!r} not found")
    mask_bytes = await upload.read()
    data = await asyncio.to_thread(_apply_mask, original, mask_bytes)
    return await _upload(request, form, data)


def _apply_mask(original: Path, mask_bytes: bytes) -> bytes:
    from PIL import Image, PngImagePlugin

    try:
        base = Image.open(original)
        mask = Image.open(io.BytesIO(mask_bytes)).convert("RGBA")
    except Exception as exc:
        raise fail(400, "bad_request", "the original or the mask is not a readable image", str(exc)) from exc
    info = PngImagePlugin.PngInfo()
    for key, value in getattr(base, "text", {}).items():
        info.add_text(key, value)
    out_image = base.convert("RGBA")
    out_image.putalpha(mask.getchannel("A").resize(out_image.size))
    out = io.BytesIO()
    out_image.save(out, format="PNG", pnginfo=info, compress_level=4)
    return out.getvalue()
