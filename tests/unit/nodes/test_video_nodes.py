"""Video nodes: the empty video latent, animated WEBP/PNG and the VIDEO path (CreateVideo -> SaveVideo
as MP4/H.264 -> GetVideoComponents). Every saved file is opened again and checked for frame count,
size, frame rate and metadata."""

from __future__ import annotations

import json
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from PIL import Image

from diffmesh.config.paths import Paths
from diffmesh.nodes import video
from diffmesh.nodes.base import NodeContext

FRAMES, H, W = 5, 48, 64


@pytest.fixture
def paths(tmp_path):
    paths = Paths.build(tmp_path)
    paths.ensure_dirs()
    return paths


def _ctx(paths, **options) -> NodeContext:
    return NodeContext(engine=None, paths=paths, node_id="9", prompt={}, extra_data={}, state={}, options=options)


@pytest.fixture(scope="module")
def frames():
    """Five frames, each a different flat grey with a bright square moving right."""
    images = torch.zeros(FRAMES, H, W, 3)
    for i in range(FRAMES):
        images[i] = 0.1 + 0.15 * i
        images[i, 8:24, 8 * i:8 * i + 16] = 1.0
    return images


@pytest.mark.parametrize("length,frames_out", [(1, 1), (5, 2), (25, 7), (81, 21)])
def test_empty_video_latent_has_one_frame_per_four(length, frames_out):
    latent = video.empty_video_latent(None, 832, 480, length, 2)[0]["samples"]
    assert latent.shape == (2, 16, frames_out, 60, 104) and not latent.any()


def _file(paths, ui: dict):
    entry = ui["images"][0]
    return paths.type_dir(entry["type"]) / entry["subfolder"] / entry["filename"]


def test_animated_webp_has_every_frame_at_the_frame_rate(paths, frames):
    result = video.save_animated_webp(_ctx(paths), frames, "anim/clip", 8.0, True, 80, "default",
                                      prompt={"1": {"class_type": "X"}}, extra_pnginfo={"workflow": {"n": 1}})
    assert result["ui"]["animated"] == (True,) and result["result"][0] is frames
    path = _file(paths, result["ui"])
    assert path.name == "clip_00001_.webp" and result["ui"]["images"][0]["subfolder"] == "anim"
    with Image.open(path) as img:
        assert img.is_animated and img.n_frames == FRAMES and img.size == (W, H)
        img.load()
        assert img.info["duration"] == 125                                  # int(1000 / fps)
        exif = img.getexif()
        assert exif[0x0110].startswith("prompt:") and json.loads(exif[0x0110][7:]) == {"1": {"class_type": "X"}}
        assert exif[0x010F] == 'workflow:{"n": 1}'
        img.seek(2)
        third = torch.from_numpy(np.array(img.convert("RGB"))).float() / 255
    assert (third - frames[2]).abs().max() <= 1 / 255 + 1e-6                  # lossless


def test_one_image_webp_is_not_animated(paths, frames):
    assert video.save_animated_webp(_ctx(paths), frames[:1], "still", 6.0, False, 50, "fastest")["ui"]["animated"] \
        == (False,)


def test_animated_png_has_every_frame_and_comfyui_metadata_chunks(paths, frames):
    result = video.save_animated_png(_ctx(paths), frames, "apng", 4.0, 1, prompt={"p": 1},
                                     extra_pnginfo={"workflow": {"w": 2}})
    path = _file(paths, result["ui"])
    with Image.open(path) as img:
        assert img.is_animated and img.n_frames == FRAMES and img.size == (W, H)
        assert img.info["duration"] == 250
    data = path.read_bytes()
    assert b'comfprompt\x00{"p": 1}' in data and b'comfworkflow\x00{"w": 2}' in data
    assert data.index(b"comfprompt") > data.index(b"IDAT")


def test_metadata_is_left_out_when_disabled(paths, frames):
    result = video.save_animated_png(_ctx(paths, disable_metadata=True), frames, "apng", 4.0, 1, prompt={"p": 1})
    assert b"comf" not in _file(paths, result["ui"]).read_bytes()


def test_create_save_and_split_video_as_h264_mp4(paths, frames):
    (clip,) = video.create_video(_ctx(paths), frames, 16.0)
    result = video.save_video(_ctx(paths), clip, "video/ComfyUI", "auto", "auto", prompt={"3": {"class_type": "K"}})
    ui = result["ui"]
    assert ui["animated"] == (True,) and ui["images"][0]["filename"] == "ComfyUI_00001_.mp4"
    assert ui["images"][0]["subfolder"] == "video" and result["result"] == (clip,)
    with av.open(str(_file(paths, ui))) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and (stream.width, stream.height) == (W, H)
        assert stream.average_rate == Fraction(16) and stream.frames == FRAMES
        assert json.loads(container.metadata["prompt"]) == {"3": {"class_type": "K"}}
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == FRAMES
    # lossy, but each frame is still its own frame: the bright square sits where it was drawn
    for i, frame in enumerate(decoded):
        square = torch.from_numpy(frame[8:24, 8 * i + 4:8 * i + 12]).float() / 255
        assert square.mean() > 0.8

    images, audio, fps = video.get_video_components(_ctx(paths), clip)
    assert images is frames and audio is None and fps == 16.0
    second = video.save_video(_ctx(paths), clip, "video/ComfyUI", "mp4", "h264")
    assert second["ui"]["images"][0]["filename"] == "ComfyUI_00002_.mp4"


def test_video_with_audio_gets_an_aac_stream(paths, frames):
    audio = {"waveform": torch.sin(torch.linspace(0, 400, 44100))[None, None].repeat(1, 2, 1), "sample_rate": 44100}
    (clip,) = video.create_video(_ctx(paths), frames, 10.0, audio)
    ui = video.save_video(_ctx(paths), clip, "with_audio", "auto", "auto")["ui"]
    with av.open(str(_file(paths, ui))) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.streams.audio[0].sample_rate == 44100


def test_odd_sizes_are_refused_with_the_fix(paths, frames):
    (clip,) = video.create_video(_ctx(paths), frames[:, :47], 8.0)
    with pytest.raises(ValueError, match="even width and height, got 64x47: crop or scale"):
        video.save_video(_ctx(paths), clip, "odd", "auto", "auto")
    assert not list((paths.type_dir("output")).glob("odd_*"))              # no partial file left
