"""The official frontend loads a custom node pack's web extension from `diffmesh serve`: the script
listed by GET /extensions is imported, registers its extension, and calls the pack's own route;
the pack's V1 and V3 nodes are in the page's node library."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import CHROMIUM, load, open_page
from serverproc import ServerProcess

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                                 reason=f"needs Debian chromium at {CHROMIUM} (apt-get install chromium)")]

PACKS = Path(__file__).resolve().parents[1] / "data" / "custom_packs"


def test_frontend_imports_the_pack_web_extension_and_it_reaches_the_pack_route(tmp_path):
    base = tmp_path / "base"
    (base / "models" / "compat_models").mkdir(parents=True)
    (base / "models" / "compat_models" / "hello.txt").write_text("hi\n")
    with ServerProcess(base, "--custom-nodes-dir", str(PACKS), "--cpu") as server:
        server.wait_ready()
        with open_page(server) as page:
            load(page, server.url)
            page.wait_for_function("() => window.compatPackEcho !== undefined", timeout=60000)
            echo = page.evaluate("() => window.compatPackEcho")
            names = page.evaluate("() => window.app.extensions.map(e => e.name)")
            types = page.evaluate("() => Object.keys(window.LiteGraph?.registered_node_types ?? {})")
            errors = list(page.errors)
    assert echo == {"name": "from-page", "x": "2", "models": ["hello.txt"]}
    assert "compat_pack.hello" in names
    assert {"CompatReadModel", "CompatSolidImage", "SaveImageWebsocket"} <= set(types)
    assert errors == []
