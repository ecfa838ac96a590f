"""Pack endpoints on the real app in-process: they run inside the access checks, a core route of
the same path wins (as in ComfyUI, whose core routes are registered first), aiohttp-style HTTP
errors become their status, and a failing handler answers 500 naming the pack."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from diffmesh.compat import CompatLayer, PackServer
from diffmesh.config.paths import Paths
from diffmesh.nodes.registry import NodeRegistry
from diffmesh.server.app import create_app
from diffmesh.server.config import ServerConfig
from diffmesh.server.runtime_ref import RuntimeRef

AUTH = {"Authorization": "Bearer secret"}


@pytest.fixture
def client(tmp_path):
    paths = Paths.build(tmp_path)
    assets = tmp_path / "assets"
    (assets / "img").mkdir(parents=True)
    (assets / "img" / "logo.svg").write_text("<svg/>")
    packs = PackServer()
    layer = CompatLayer(paths, NodeRegistry(), server=packs)
    layer.loading_pack = "demo_pack"
    with layer.active():
        from aiohttp import web
        from server import PromptServer

        routes = PromptServer.instance.routes

        @routes.get("/demo/hello")
        async def hello(request):
            return web.json_response({"hello": request.query.get("who", "world")})

        @routes.get("/system_stats")
        async def shadowed(request):
            return web.json_response({"pack": True})

        @routes.get("/demo/missing")
        async def missing(request):
            raise web.HTTPNotFound(text="no such thing")

        routes.static("/demo/assets", str(assets))

        @routes.get("/demo/broken")
        async def broken(request):
            raise RuntimeError("the pack broke")

    config = ServerConfig(listen="0.0.0.0", auth_token="secret", state_db=tmp_path / "queue.sqlite3")
    app = create_app(RuntimeRef(), config, paths=paths, pack_server=packs)
    return TestClient(app, base_url="http://localhost")


def test_pack_routes_need_the_access_token_like_every_route(client):
    assert client.get("/demo/hello").status_code == 401
    assert client.get("/api/demo/hello", params={"who": "x"}, headers=AUTH).json() == {"hello": "x"}


def test_a_core_route_of_the_same_path_wins(client):
    stats = client.get("/system_stats", headers=AUTH).json()
    assert "pack" not in stats and "system" in stats


def test_http_errors_and_failures_of_a_pack_handler(client):
    missing = client.get("/demo/missing", headers=AUTH)
    assert missing.status_code == 404 and missing.text == "no such thing"
    broken = client.get("/demo/broken", headers=AUTH)
    assert broken.status_code == 500
    assert broken.json()["error"]["message"] == "RuntimeError: the pack broke"
    assert "demo_pack" in broken.json()["error"]["details"]


def test_a_folder_served_with_routes_static(client):
    logo = client.get("/demo/assets/img/logo.svg", headers=AUTH)
    assert logo.status_code == 200 and logo.text == "<svg/>"
    assert client.get("/demo/assets/img/none.svg", headers=AUTH).status_code == 404
    assert client.get("/demo/assets/%2e%2e/queue.sqlite3", headers=AUTH).status_code in (403, 404)
