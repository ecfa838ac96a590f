"""The HTTP and websocket protocol of `diffmesh serve`, against a real server process with the real
runtime; prompts use the `Sleep`/`Fail` custom nodes (`testnodes.py`) so they need no models."""

from __future__ import annotations

import json
import struct
import time

import pytest
from serverproc import events_until_done, wait_for_history
from websocket import create_connection

BOOT_ROUTES = ["/users", "/settings", "/object_info", "/queue", "/history?max_items=64", "/extensions",
               "/system_stats", "/features", "/i18n", "/embeddings", "/models", "/prompt"]


def _ws(server, client_id: str | None = None, flags: dict | None = None):
    url = server.ws_url + (f"?clientId={client_id}" if client_id else "")
    ws = create_connection(url, timeout=30, header=[f"{k}: {v}" for k, v in server.headers.items()])
    hello = json.loads(ws.recv())
    if flags is not None:
        ws.send(json.dumps({"type": "feature_flags", "data": flags}))
        reply = json.loads(ws.recv())
        assert reply["type"] == "feature_flags"
    return ws, hello


def test_frontend_boot_routes_answer_json_with_and_without_api_prefix(node_server):
    with node_server.client() as http:
        for route in BOOT_ROUTES:
            for prefix in ("", "/api"):
                response = http.get(prefix + route)
                assert response.status_code == 200, (prefix + route, response.text)
                response.json()
        workflows = http.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true")
        assert workflows.status_code in (200, 404)
        index = http.get("/")
        assert index.status_code == 200 and "<html" in index.text.lower()
        assert index.headers["cache-control"] == "no-cache"
        assert http.get("/internal/folder_paths").status_code == 200
        assert http.get("/internal/files/input").json() == []


def test_system_stats_lists_devices_with_memory_and_what_runs_where(node_server):
    with node_server.client() as http:
        stats = http.get("/api/system_stats").json()
    assert stats["system"]["required_frontend_version"] == "1.58.1"
    assert stats["system"]["required_templates_version"] == "0.11.97"
    packages = {p["name"]: p for p in stats["system"]["comfy_package_versions"]}
    assert packages["comfyui-frontend-package"]["installed"] == "1.58.1"   # the pin is what is installed
    assert stats["devices"] and all(d["vram_total"] > 0 and "vram_free" in d for d in stats["devices"])
    assert "diffmesh" in stats and "running_prompts" in stats["diffmesh"]


def test_malformed_json_unknown_routes_and_bad_queries_are_4xx_never_500(node_server):
    with node_server.client() as http:
        bad = http.post("/api/prompt", content=b"{not json", headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_json"
        assert http.post("/api/prompt", content=b"[1, 2]").status_code == 400
        assert http.post("/api/prompt", content=b"").status_code == 400
        assert http.get("/api/no/such/route").status_code == 404
        assert http.get("/no-such-file.js").status_code == 404
        assert http.get("/api/history?max_items=abc").status_code == 400
        assert http.post("/api/queue", content=b"{oops").status_code == 400
        assert http.post("/api/settings/Comfy.X", content=b"{oops").status_code == 400
        assert http.post("/api/interrupt", content=b"{oops").status_code == 200  # like ComfyUI
        assert http.get("/api/models/no_such_folder").status_code == 404


def test_prompt_without_prompt_or_with_unknown_node_gets_comfyui_error_shape(node_server):
    with node_server.client() as http:
        missing = http.post("/api/prompt", json={"client_id": "x"})
        assert missing.status_code == 400
        assert missing.json()["error"]["type"] == "no_prompt"
        unknown = http.post("/api/prompt", json={"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}})
        assert unknown.status_code == 400
        body = unknown.json()
        assert set(body) == {"error", "node_errors"}
        assert set(body["error"]) == {"type", "message", "details", "extra_info"}
        assert body["error"]["type"] == "invalid_prompt" and "NoSuchNode" in body["error"]["message"]


def test_websocket_sends_status_with_sid_and_answers_feature_flags(node_server):
    ws, hello = _ws(node_server, "my-client", flags={"supports_preview_metadata": True})
    try:
        assert hello["type"] == "status" and hello["data"]["sid"] == "my-client"
        assert hello["data"]["status"]["exec_info"]["queue_remaining"] == 0
    finally:
        ws.close()


def test_prompt_events_arrive_in_order_and_history_has_comfyui_shape(node_server):
    ws, _ = _ws(node_server, "c1", flags={"supports_preview_metadata": True})
    try:
        with node_server.client() as http:
            answer = http.post("/api/prompt", json={"prompt": {"5": {"class_type": "Sleep", "inputs": {"seconds": 0.2}}},
                                                    "client_id": "c1", "extra_data": {"extra_pnginfo": {"a": 1}}})
            assert answer.status_code == 200, answer.text
            prompt_id = answer.json()["prompt_id"]
            assert answer.json()["node_errors"] == {}
            events, _ = events_until_done(ws, prompt_id)
            entry = wait_for_history(http, prompt_id)
    finally:
        ws.close()
    assert "progress_state" in [e["type"] for e in events]
    kinds = [e["type"] for e in events if e["type"] not in ("status", "progress_state")]
    assert kinds[:3] == ["execution_start", "execution_cached", "executing"]
    assert kinds.count("progress") == 4
    assert kinds[-3:] == ["executed", "execution_success", "executing"]
    assert events[-1]["data"] == {"node": None, "prompt_id": prompt_id}
    assert set(entry) == {"prompt", "outputs", "status", "meta"}
    number, pid, prompt, extra, outputs = entry["prompt"]
    assert pid == prompt_id and outputs == ["5"] and extra["client_id"] == "c1" and "create_time" in extra
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached", "execution_success"]
    assert all("timestamp" in m[1] for m in entry["status"]["messages"])
    assert entry["outputs"] == {"5": {"text": ["5 done"]}}
    assert entry["meta"]["5"]["node_id"] == "5"


@pytest.mark.parametrize("metadata", [True, False])
def test_latent_previews_are_binary_frames_type_4_with_metadata_else_type_1(node_server, metadata):
    ws, _ = _ws(node_server, "p1", flags={"supports_preview_metadata": metadata})
    try:
        with node_server.client() as http:
            prompt_id = http.post("/api/prompt", json={
                "prompt": {"7": {"class_type": "Sleep", "inputs": {"seconds": 0.1}}}, "client_id": "p1",
                "extra_data": {"preview_method": "latent2rgb"}}).json()["prompt_id"]
            _, frames = events_until_done(ws, prompt_id)
    finally:
        ws.close()
    assert len(frames) == 4
    kind = struct.unpack(">I", frames[0][:4])[0]
    if metadata:
        assert kind == 4
        length = struct.unpack(">I", frames[0][4:8])[0]
        meta = json.loads(frames[0][8:8 + length])
        assert meta["node_id"] == "7" and meta["prompt_id"] == prompt_id and meta["image_type"] == "image/jpeg"
        assert frames[0][8 + length:8 + length + 2] == b"\xff\xd8"  # JPEG
    else:
        assert kind == 1 and struct.unpack(">I", frames[0][4:8])[0] == 1 and frames[0][8:10] == b"\xff\xd8"


def test_node_error_becomes_execution_error_and_the_server_goes_on(node_server):
    ws, _ = _ws(node_server, "e1")
    try:
        with node_server.client() as http:
            prompt_id = http.post("/api/prompt", json={"prompt": {"3": {"class_type": "Fail", "inputs": {}}},
                                                       "client_id": "e1"}).json()["prompt_id"]
            events, _ = events_until_done(ws, prompt_id)
            error = next(e["data"] for e in events if e["type"] == "execution_error")
            assert error["node_id"] == "3" and error["node_type"] == "Fail"
            assert "always fails" in error["exception_message"] and error["traceback"]
            entry = wait_for_history(http, prompt_id)
            assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
            ok = http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}}).json()
            assert wait_for_history(http, ok["prompt_id"])["status"]["completed"] is True
    finally:
        ws.close()


def test_queue_lists_pending_items_as_five_arrays_and_can_delete_and_interrupt(node_server):
    with node_server.client() as http:
        long = http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Sleep", "inputs": {"seconds": 30}}}})
        ids = [http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}}).json()["prompt_id"]
               for _ in range(3)]
        time.sleep(0.5)
        queue = http.get("/api/queue").json()
        assert [i[1] for i in queue["queue_running"]] == [long.json()["prompt_id"]]
        assert [i[1] for i in queue["queue_pending"]] == ids
        assert all(len(i) == 5 for i in queue["queue_pending"])
        assert http.post("/api/queue", json={"delete": [ids[0]]}).status_code == 200
        assert [i[1] for i in http.get("/api/queue").json()["queue_pending"]] == ids[1:]
        assert http.post("/api/interrupt", json={"prompt_id": "not-running"}).status_code == 200
        assert http.get("/api/queue").json()["queue_running"]
        assert http.post("/api/interrupt").status_code == 200
        entry = wait_for_history(http, long.json()["prompt_id"], timeout=20)
        assert entry["status"]["status_str"] == "error"
        assert any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
        for pid in ids[1:]:
            wait_for_history(http, pid)
        assert ids[0] not in http.get("/api/history").json()
        assert http.post("/api/history", json={"clear": True}).status_code == 200
        assert http.get("/api/history").json() == {}


def test_settings_and_userdata_round_trip(node_server):
    with node_server.client() as http:
        assert http.post("/api/settings/Comfy.InstalledVersion", json="1.35.9").status_code == 200
        assert http.post("/api/settings", json={"a.b": [1, 2]}).status_code == 200
        # Saved values, over the server's defaults for a user who never changed them.
        assert http.get("/api/settings").json() == {"Comfy.TutorialCompleted": True,
                                                    "Comfy.InstalledVersion": "1.35.9", "a.b": [1, 2]}
        assert http.get("/api/settings/a.b").json() == [1, 2]
        assert http.post("/api/settings/Comfy.TutorialCompleted", json=False).status_code == 200
        assert http.get("/api/settings/Comfy.TutorialCompleted").json() is False
        saved = http.post("/api/userdata/workflows%2Fone.json", content=b'{"x": 1}')
        assert saved.status_code == 200 and saved.json() == "workflows/one.json"
        assert http.post("/api/userdata/workflows%2Fone.json?overwrite=false", content=b"{}").status_code == 409
        listing = http.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
        assert [f["path"] for f in listing] == ["one.json"]
        assert http.get("/api/userdata/workflows%2Fone.json").json() == {"x": 1}
        moved = http.post("/api/userdata/workflows%2Fone.json/move/workflows%2Ftwo.json")
        assert moved.status_code == 200 and moved.json() == "workflows/two.json"
        assert http.delete("/api/userdata/workflows%2Ftwo.json").status_code == 204
        assert http.get("/api/userdata/workflows%2Ftwo.json").status_code == 404


TRAVERSALS = ["../secret.txt", "..%2Fsecret.txt", "%2E%2E%2Fsecret.txt", "/etc/passwd", "..\\secret.txt",
              "a/../../secret.txt"]


def test_file_routes_never_leave_their_folders(node_server, tmp_path):
    base = node_server.base
    (base / "secret.txt").write_text("secret")
    (base / "input").mkdir(exist_ok=True)
    (base / "input" / "link.txt").symlink_to(base / "secret.txt")
    with node_server.client() as http:
        for name in TRAVERSALS:
            for url in (f"/api/view?filename={name}&type=input", f"/api/view?filename=x.png&subfolder={name}",
                        f"/api/userdata/{name}", f"/api/userdata?dir={name}"):
                response = http.get(url)
                assert response.status_code in (400, 403, 404), (url, response.status_code)
                assert "secret" not in response.text or response.status_code != 200
        assert http.get("/api/view?filename=link.txt&type=input").status_code in (403, 404)
        assert http.get("/api/view?filename=x.png&type=nope").status_code == 400
        stripped = http.post("/api/upload/image", files={"image": ("../evil.png", b"data", "image/png")})
        assert stripped.status_code == 200 and stripped.json()["name"] == "evil.png"  # base name only, like ComfyUI
        assert (base / "input" / "evil.png").exists()
        for name, subfolder in [("ok.png", "../.."), ("ok.png", "/tmp"), ("..", ""), ("ok.png", "a/../../x")]:
            response = http.post("/api/upload/image", files={"image": (name, b"data", "image/png")},
                                 data={"subfolder": subfolder})
            assert response.status_code in (400, 403), (name, subfolder, response.text)
        assert http.post("/api/userdata/..%2Fevil.json", content=b"{}").status_code in (400, 403)
    assert not (base / "evil.png").exists() and not (base / "evil.json").exists()
    assert not (base / "user" / "evil.json").exists()


def test_upload_then_view_returns_the_same_bytes_and_dedups_names(node_server):
    with node_server.client() as http:
        first = http.post("/api/upload/image", files={"image": ("a.png", b"one", "image/png")}).json()
        again = http.post("/api/upload/image", files={"image": ("a.png", b"one", "image/png")}).json()
        other = http.post("/api/upload/image", files={"image": ("a.png", b"two", "image/png")},
                          data={"subfolder": "pasted"}).json()
        clash = http.post("/api/upload/image", files={"image": ("a.png", b"three", "image/png")}).json()
        assert first == again == {"name": "a.png", "subfolder": "", "type": "input"}
        assert other == {"name": "a.png", "subfolder": "pasted", "type": "input"}
        assert clash["name"] == "a (1).png"
        assert http.get("/api/view?filename=a.png&type=input&subfolder=pasted").content == b"two"
        assert http.get("/api/view?filename=a.png [input]").content == b"one"


def test_oversized_upload_gets_413(tmp_path, start_server):
    with start_server(tmp_path / "base", "--max-upload-size", "1") as server:
        server.wait_ready()
        with server.client() as http:
            big = b"x" * (1024 * 1024 + 10)
            response = http.post("/api/upload/image", files={"image": ("big.png", big, "image/png")})
            assert response.status_code == 413
            assert response.json()["error"]["type"] == "request_too_large"

            def chunks():
                for _ in range(3):
                    yield b"y" * (512 * 1024)

            streamed = http.post("/api/userdata/big.bin", content=chunks())
            assert streamed.status_code == 413
            assert http.get("/api/system_stats").status_code == 200
        assert not (server.base / "input" / "big.png").exists()


def test_non_local_listen_requires_the_printed_token_on_http_and_websocket(tmp_path, start_server):
    with start_server(tmp_path / "base", listen="127.0.0.2") as server:
        assert server.url.startswith("http://127.0.0.2:")
        deadline = time.monotonic() + 10
        while server.printed_token is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.printed_token
        server.wait_ready()
        import httpx

        for route in ("/system_stats", "/api/queue", "/", "/api/view?filename=a.png"):
            assert httpx.get(server.url + route).status_code == 401
        assert httpx.get(server.url + "/api/queue", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(server.url + "/api/queue", headers=server.headers).status_code == 200
        assert httpx.get(server.url + f"/api/queue?token={server.printed_token}").status_code == 200
        with pytest.raises(Exception):
            create_connection(server.ws_url, timeout=10).recv()
        ws = create_connection(server.ws_url + f"?token={server.printed_token}", timeout=10)
        assert json.loads(ws.recv())["type"] == "status"
        ws.close()


def test_auth_token_flag_protects_a_loopback_server_too(tmp_path, start_server):
    with start_server(tmp_path / "base", "--auth-token", "s3cret", token="s3cret") as server:
        server.wait_ready()
        import httpx

        assert httpx.get(server.url + "/api/settings").status_code == 401
        assert httpx.get(server.url + "/api/settings", headers=server.headers).status_code == 200


def test_cross_origin_requests_to_a_loopback_server_are_refused_unless_cors_is_enabled(node_server, tmp_path,
                                                                                     start_server):
    with node_server.client() as http:
        assert http.get("/api/queue", headers={"Origin": "http://evil.example"}).status_code == 403
        assert http.get("/api/queue", headers={"Origin": node_server.url}).status_code == 200
    with start_server(tmp_path / "cors", "--enable-cors-header", "http://ui.example") as server:
        server.wait_ready()
        with server.client() as http:
            response = http.get("/api/queue", headers={"Origin": "http://ui.example"})
            assert response.status_code == 200
            assert response.headers["access-control-allow-origin"] == "http://ui.example"
