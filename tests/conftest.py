"""Session fixtures shared by every test: tiny random models, the full random SD1.5, reference data.

Model files are generated once into `<repo>/.cache/` and reused by later sessions; a file lock
keeps parallel pytest sessions (several helpers, xdist) from writing the same files at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_DIR = REPO_ROOT / ".cache"


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


REFERENCE_DIR = REPO_ROOT / "tests" / "data" / "reference"     # a copy of ../shared/reference (see its README)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The recorded reference numbers (ComfyUI 0.8.0 runs, generator scripts, API spec), kept in the
    repository at tests/data/reference so a clone alone runs every parity test."""
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference data missing at {REFERENCE_DIR}: it is part of the repository; check out tests/data/")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def tiny_model_files() -> dict:
    """Everything `write_test_models` writes: {"base", "checkpoints", "loras", "embeddings", "vae"}."""
    from diffmesh.models.testmodels import TEST_MODELS_VERSION, write_test_models

    base = CACHE_DIR / "test-models"
    stamp = base / "complete.json"
    with _file_lock(CACHE_DIR / "test-models.lock"):
        if stamp.exists():
            info = json.loads(stamp.read_text())
            paths_ok = all(Path(p).exists() for group in info.values() if isinstance(group, dict)
                           for p in group.values())
            if info.get("version") == TEST_MODELS_VERSION and paths_ok:
                return info
        info = write_test_models(base)
        info["version"] = TEST_MODELS_VERSION
        stamp.write_text(json.dumps(info, indent=1))
    return info


@pytest.fixture(scope="session")
def models_base(tiny_model_files) -> Path:
    """A base dir with models/{checkpoints,loras,embeddings,vae} filled with tiny files."""
    return Path(tiny_model_files["base"])


@pytest.fixture(scope="session")
def tiny_models(tiny_model_files) -> dict[str, str]:
    """family -> tiny checkpoint path, keys "sd1", "sd2", "sd2v", "sdxl"."""
    return dict(tiny_model_files["checkpoints"])


@pytest.fixture(scope="session")
def sd15_full_checkpoint() -> Path:
    """The full-size random SD1.5 (2 GB fp16), made by the reference script once into .cache/."""
    out = CACHE_DIR / "sd15-random.safetensors"
    with _file_lock(CACHE_DIR / "sd15-random.lock"):
        if not out.exists():
            script = REFERENCE_DIR / "make_sd15_random.py"
            if script.exists():
                subprocess.run([sys.executable, str(script), "--variant", "full", "--out", str(out)], check=True)
            else:
                # our own port writes the same bytes
                from diffmesh.models.testmodels import make_test_model

                make_test_model("sd15", "full", out)
    return out


# (family, part) -> file name the reference runs use (reference README, "DiT families")
DIT_REFERENCE_FILES = {
    ("flux", "model"): "flux1-dev-random.safetensors",
    ("flux", "vae"): "flux-ae-random.safetensors",
    ("zimage", "model"): "zimage-random.safetensors",
    ("zimage", "vae"): "flux-ae-random.safetensors",
    ("wan21", "model"): "wan21-t2v-tiny-random.safetensors",
    ("wan21", "vae"): "wan21-vae-random.safetensors",
    ("qwenimage", "model"): "qwenimage-1block-random.safetensors",
}


@pytest.fixture(scope="session")
def dit_reference_weights(reference_dir):
    """`get(family, part="model") -> Path`: the random-weight transformer/VAE files of the DiT
    reference runs in .cache/dit/, written once by reference/make_dit_random.py (fp32, seed 0) when
    missing. Only the files a test asks for are made (Z-Image's is 3.6 GB, about 30 s)."""
    folder = CACHE_DIR / "dit"

    def get(family: str, part: str = "model") -> Path:
        out = folder / DIT_REFERENCE_FILES[(family, part)]
        with _file_lock(CACHE_DIR / "dit.lock"):
            if not out.exists():
                folder.mkdir(parents=True, exist_ok=True)
                subprocess.run([sys.executable, str(reference_dir / "make_dit_random.py"), "--family", family,
                                "--part", part, "--out", str(out)], check=True)
        return out

    return get
