"""Headless Debian Chromium driving the real frontend of a `diffmesh serve` for the browser tests.

`open_page(server)` yields a Playwright page whose `errors` list collects page errors, console
errors of the page's own code, and every 4xx/5xx answer of the server to the frontend's requests
(the frontend's optional files, which ComfyUI also answers with 404, excepted). Requests to other
hosts (release notes, model links the frontend probes) are aborted: the tests run offline.
`tiny_models_tree(...)` links the tiny test models under the names the UI workflows pick.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from playwright import sync_api as playwright_api

CHROMIUM = "/usr/bin/chromium"
# Optional files whose 404 the frontend expects (ComfyUI answers 404 for them too).
OPTIONAL_404 = ("/user.css", "/api/userdata/user.css", "/api/userdata/comfy.templates.json")
OFFLINE_NOISE = ("Failed to load resource",)     # the aborted outside requests and the optional 404s


@contextlib.contextmanager
def open_page(server, width: int = 1400, height: int = 900):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.errors = []
            page.route(lambda url: not url.startswith(server.url), lambda route: route.abort())
            page.on("console", lambda m: page.errors.append(f"console: {m.text}")
                    if m.type == "error" and not m.text.startswith(OFFLINE_NOISE) else None)
            page.on("pageerror", lambda e: page.errors.append(f"pageerror: {e}"))
            page.on("response", lambda r: page.errors.append(f"http {r.status} {r.request.method} {r.url}")
                    if r.status >= 400 and r.url.startswith(server.url)
                    and not r.url.split("?")[0].endswith(OPTIONAL_404) else None)
            try:
                yield page
            except BaseException as exc:      # keep what the page showed when a test failed
                shot = Path(tempfile.gettempdir()) / f"diffmesh-browser-failure-{os.getpid()}.png"
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(shot))
                    exc.add_note(f"screenshot of the page: {shot}")
                raise
        finally:
            browser.close()


def load(page, url: str) -> None:
    """Opens the UI and waits until the app has built its graph (a new user's default workflow)."""
    page.goto(url, wait_until="domcontentloaded", timeout=90000)
    page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes?.length > 0",
                           timeout=120000)


def _link(source: str | Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy(source, target)


def tiny_models_tree(tiny_model_files: dict, root: Path) -> Path:
    """`root/models` with the tiny SD1 checkpoint, the tiny Z-Image Turbo set (transformer,
    Qwen3-4B text encoder, Flux VAE) and the tiny Flux.1-dev set (transformer, T5-XXL and CLIP-L);
    returns the models folder."""
    from diffmesh.models.testmodels import make_test_model

    models = root / "models"
    _link(tiny_model_files["checkpoints"]["sd1"], models / "checkpoints" / "tiny-sd1.safetensors")
    _link(tiny_model_files["dit"]["zimage"], models / "diffusion_models" / "tiny-zimage.safetensors")
    _link(tiny_model_files["flux"]["flux_vae"], models / "vae" / "tiny-flux-ae.safetensors")
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    make_test_model("qwen3_4b", "tiny", models / "text_encoders" / "tiny-qwen3-4b.safetensors")
    _link(tiny_model_files["flux"]["flux_dev"], models / "diffusion_models" / "tiny-flux-dev.safetensors")
    make_test_model("t5xxl", "tiny", models / "text_encoders" / "tiny-t5xxl.safetensors")
    make_test_model("clip_l", "tiny", models / "text_encoders" / "tiny-clip_l.safetensors")
    return models
