"""Tiny random text encoders in ComfyUI's file layouts, written once into <repo>/.cache/."""

from __future__ import annotations

import contextlib
import fcntl
import json
from pathlib import Path

import pytest

from diffmesh.models.load import WeightStore

CACHE = Path(__file__).resolve().parents[3] / ".cache"
VERSION = "3"
# file name -> (family, folder): one file lives in the legacy clip/ folder, as in old ComfyUI installs
FILES = {"tiny-clip_l.safetensors": ("clip_l", "text_encoders"), "tiny-t5xxl.safetensors": ("t5xxl", "text_encoders"),
         "tiny-qwen_3_4b.safetensors": ("qwen3_4b", "text_encoders"),
         "tiny-qwen_2.5_vl_7b.safetensors": ("qwen25_7b", "clip")}


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def te_base() -> Path:
    """A base folder whose models/text_encoders and models/clip hold the tiny text encoders."""
    from diffmesh.models.text.testfiles import make_text_encoder

    base = CACHE / "test-text-encoders"
    stamp = base / "complete.json"
    with _lock(CACHE / "test-text-encoders.lock"):
        done = stamp.exists() and json.loads(stamp.read_text()).get("version") == VERSION
        if not done or not all((base / "models" / folder / name).exists() for name, (_, folder) in FILES.items()):
            for name, (family, folder) in FILES.items():
                (base / "models" / folder).mkdir(parents=True, exist_ok=True)
                make_text_encoder(family, "tiny", base / "models" / folder / name)
            stamp.write_text(json.dumps({"version": VERSION}))
    return base


@pytest.fixture(scope="session")
def te_files(te_base) -> dict[str, str]:
    """family -> path: clip_l, t5xxl, qwen3_4b, qwen25_7b."""
    return {family: str(te_base / "models" / folder / name) for name, (family, folder) in FILES.items()}


@pytest.fixture(scope="module")
def store():
    return WeightStore()
