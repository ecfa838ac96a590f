"""The official frontend, served by `diffmesh serve`, in headless Chromium: it loads without
console errors of ours, lists the core nodes, and runs its default workflow on a tiny model."""

from __future__ import annotations

import os

import pytest
from playwright import sync_api as playwright_api
from serverproc import ServerProcess

CHROMIUM = "/usr/bin/chromium"
# Optional files whose 404 the frontend expects (ComfyUI answers 404 for them too).
OPTIONAL_404 = ("/user.css", "/api/userdata/user.css", "/api/userdata/comfy.templates.json")

# Without chromium a developer's run skips these; CI (CI set) installs it, so there it never skips.
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason=f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")]


@pytest.fixture(scope="module")
def ui_server(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("ui")
    with ServerProcess(base / "base", "--models-dir", str(models_base / "models")) as server:
        server.wait_ready()
        yield server


@pytest.fixture
def page(ui_server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            pg = browser.new_page()
            pg.errors = []
            pg.on("console", lambda m: pg.errors.append(f"console: {m.text}")
                  if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
            pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
            pg.on("response", lambda r: pg.errors.append(f"http {r.status} {r.url}")
                  if r.status >= 400 and r.url.startswith(ui_server.url)
                  and not r.url.endswith(OPTIONAL_404) else None)
            yield pg
        finally:
            browser.close()


def _ours(errors: list[str]) -> list[str]:
    return list(errors)


def _load(page, url: str) -> None:
    """A new user gets the frontend's default workflow (diffmesh ships no templates to browse)."""
    page.goto(url, wait_until="domcontentloaded", timeout=60000)
    page.wait_for_function("() => window.app && window.app.graph && window.app.graph._nodes?.length > 0",
                           timeout=90000)


def test_frontend_loads_without_errors_and_lists_core_nodes(page, ui_server):
    _load(page, ui_server.url)
    types = page.evaluate("() => Object.keys(window.LiteGraph?.registered_node_types ?? {})")
    for name in ("KSampler", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEDecode", "SaveImage",
                 "EmptyLatentImage"):
        assert name in types
    classes = page.evaluate("() => window.app.graph._nodes.map(n => n.type)")
    assert "KSampler" in classes and "SaveImage" in classes
    assert _ours(page.errors) == []


def test_default_workflow_queued_from_the_page_produces_an_image(page, ui_server):
    _load(page, ui_server.url)
    page.evaluate("""() => {
        window.__executed = [];
        window.app.api.addEventListener('executed', e => window.__executed.push(e.detail));
        const set = (type, name, value) => {
            for (const node of window.app.graph._nodes.filter(n => n.type === type)) {
                const widget = node.widgets.find(w => w.name === name);
                widget.value = value;
            }
        };
        set('CheckpointLoaderSimple', 'ckpt_name', 'tiny-sd1.safetensors');
        set('EmptyLatentImage', 'width', 64);
        set('EmptyLatentImage', 'height', 64);
        set('KSampler', 'steps', 2);
    }""")
    page.evaluate("async () => { await window.app.queuePrompt(0, 1); }")
    page.wait_for_function("() => window.__executed.length > 0", timeout=120000)
    executed = page.evaluate("() => window.__executed[0]")
    image = executed["output"]["images"][0]
    status = page.evaluate("""async (img) => (await fetch(`/api/view?filename=${encodeURIComponent(img.filename)}`
        + `&subfolder=${img.subfolder}&type=${img.type}`)).status""", image)
    assert status == 200
    assert _ours(page.errors) == []
