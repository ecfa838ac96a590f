"""Security flags of `diffmesh serve` against real server processes (issue 8, "Security"): the Host
check of a token-less loopback server (DNS rebinding), CORS for exactly one origin with preflights
answered before auth, JSON content types on state-changing routes for browser requests, the access
token kept out of /system_stats and the logs, and start-up failures that end `serve`."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess

import pytest
import testnodes
from serverproc import REPO, ServerProcess, serve_command, wait_for_history
from websocket import create_connection

SLEEP = {"1": {"class_type": "Sleep", "inputs": {}}}


@pytest.fixture(scope="module")
def server(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("security") / "base"
    testnodes.install(base)
    with ServerProcess(base, "--models-dir", str(models_base / "models")) as proc:
        proc.wait_ready()
        yield proc


def _port(server) -> int:
    return int(server.url.rsplit(":", 1)[1])


# -- Host check ----------------------------------------------------------------------------------

def test_tokenless_loopback_server_refuses_foreign_host_headers(server):
    port = _port(server)
    resolving_to_loopback = socket.gethostname()      # /etc/hosts maps it to 127.0.0.1 here: never resolved
    with server.client() as http:
        for host in ("attacker.example", f"attacker.example:{port}", resolving_to_loopback,
                     f"{resolving_to_loopback}:{port}", "127.0.0.1.attacker.example", "localhost.attacker.example",
                     "0.0.0.0", "[::2]", "10.0.0.1"):
            response = http.get("/api/system_stats", headers={"Host": host})
            assert response.status_code == 403, (host, response.status_code)
            assert "Host" in response.json()["error"]["message"]
            assert http.post("/api/prompt", json={"prompt": SLEEP}, headers={"Host": host}).status_code == 403
        for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "127.1.2.3",
                     f"[::1]:{port}", "LOCALHOST", "localhost."):
            response = http.get("/api/system_stats", headers={"Host": host})
            assert response.status_code == 200, (host, response.text[:200])
    with pytest.raises(Exception):
        ws = create_connection(server.ws_url, timeout=10, host="attacker.example")
        ws.recv()


def test_loopback_origin_mismatch_is_refused_without_dns(server):
    port = _port(server)
    with server.client() as http:
        same = http.post("/api/prompt", json={"prompt": SLEEP},
                         headers={"Origin": f"http://127.0.0.1:{port}"})
        assert same.status_code == 200, same.text
        foreign = http.post("/api/prompt", json={"prompt": SLEEP}, headers={"Origin": "http://evil.example"})
        assert foreign.status_code == 403


# -- content types of state-changing routes --------------------------------------------------------

def test_browser_requests_to_json_routes_need_a_json_content_type(server):
    origin = {"Origin": server.url}
    with server.client() as http:
        for route in ("/api/prompt", "/api/queue", "/api/history", "/api/interrupt", "/api/free"):
            for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
                response = http.post(route, content=json.dumps({"prompt": SLEEP}).encode(),
                                     headers={**origin, "Content-Type": kind})
                assert response.status_code == 415, (route, kind, response.status_code)
                assert "application/json" in response.json()["error"]["message"]
            ok = http.post(route, content=b"{}", headers={**origin, "Content-Type": "application/json; charset=utf-8"})
            assert ok.status_code in (200, 400), (route, ok.text)
        # What frontend 1.35.9 sends: settings as text/plain (fetch with a string body), userdata raw,
        # uploads as multipart. These keep working from the page's own origin.
        assert http.post("/api/settings/Comfy.X", content=b'"v"', headers={**origin, "Content-Type":
                                                                            "text/plain;charset=UTF-8"}).status_code == 200
        assert http.post("/api/settings", content=b'{"Comfy.Y": 1}', headers=origin).status_code == 200
        assert http.get("/api/settings").json()["Comfy.X"] == "v"
        saved = http.post("/api/userdata/workflows%2Ft.json?overwrite=true&full_info=false", content=b'{"a": 1}',
                          headers={**origin, "Content-Type": "text/plain;charset=UTF-8"})
        assert saved.status_code == 200, saved.text
        assert http.post("/api/userdata/workflows%2Ft.json/move/workflows%2Fu.json?overwrite=false",
                         headers=origin).status_code == 200
        upload = http.post("/api/upload/image", files={"image": ("a.png", b"png", "image/png")}, headers=origin)
        assert upload.status_code == 200, upload.text
        # Scripts (no Origin): ComfyUI's own script_examples post prompts with urllib's default type.
        script = http.post("/api/prompt", content=json.dumps({"prompt": SLEEP}).encode(),
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert script.status_code == 200, script.text


# -- CORS -----------------------------------------------------------------------------------------

def test_cors_origin_allows_exactly_that_origin_and_answers_preflight_before_auth(models_base, tmp_path):
    good = "http://good.example:3000"
    base = tmp_path / "base"
    testnodes.install(base)
    with ServerProcess(base, "--models-dir", str(models_base / "models"), "--enable-cors-header", good,
                       "--auth-token", "tok-cors-1", token="tok-cors-1") as server:
        server.wait_ready()
        with server.client() as http:
            preflight = http.options("/api/prompt", headers={
                "Authorization": "", "Origin": good, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization"})
            assert preflight.status_code in (200, 204), preflight.text
            assert preflight.headers["access-control-allow-origin"] == good
            assert "POST" in preflight.headers["access-control-allow-methods"]
            assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
            bad_preflight = http.options("/api/prompt", headers={"Authorization": "", "Origin": "http://evil.example",
                                                                 "Access-Control-Request-Method": "POST"})
            assert bad_preflight.status_code == 403
            assert "access-control-allow-origin" not in bad_preflight.headers
            allowed = http.post("/api/prompt", json={"prompt": SLEEP}, headers={"Origin": good})
            assert allowed.status_code == 200, allowed.text
            assert allowed.headers["access-control-allow-origin"] == good
            refused = http.post("/api/prompt", json={"prompt": SLEEP}, headers={"Origin": "http://evil.example"})
            assert refused.status_code == 403
            assert "access-control-allow-origin" not in refused.headers
            no_token = http.get("/api/queue", headers={"Authorization": "", "Origin": good})
            assert no_token.status_code == 401
            assert no_token.headers.get("access-control-allow-origin") == good  # the page can read the 401


# -- the access token ------------------------------------------------------------------------------

def test_access_token_never_appears_in_system_stats_or_the_log(models_base, tmp_path):
    token = "tok-secret-9c1e5a"
    base = tmp_path / "base"
    testnodes.install(base)
    with ServerProcess(base, "--models-dir", str(models_base / "models"), "--auth-token", token,
                       "--log-level", "debug", token=token) as server:
        server.wait_ready()
        with server.client() as http:
            stats = http.get("/api/system_stats")
            assert stats.status_code == 200
            assert token not in stats.text
            assert "--auth-token" in stats.json()["system"]["argv"]
            pid = http.post(f"/api/prompt?token={token}", json={"prompt": SLEEP}).json()["prompt_id"]
            wait_for_history(http, pid)
            assert http.get(f"/api/view?filename=nope.png&token={token}").status_code == 404
            assert http.get("/api/queue", headers={"Authorization": f"Bearer {token}x"}).status_code == 401
            assert http.get(f"/api/queue?token={token}x", headers={"Authorization": ""}).status_code == 401
    log = "\n".join(server.lines)
    assert token not in log
    with ServerProcess(base, "--models-dir", str(models_base / "models"), f"--auth-token={token}",
                       token=token) as server:
        server.wait_ready()
        with server.client() as http:
            assert token not in http.get("/api/system_stats").text


# -- start-up failures end serve -------------------------------------------------------------------

def test_serve_with_a_missing_cuda_device_exits_2_with_the_message_before_serving(tmp_path):
    cmd = serve_command() + ["--port", "0", "--base-directory", str(tmp_path), "--cuda-device", "7"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "--cuda-device" in done.stderr and ("no CUDA device" in done.stderr or "unknown CUDA device" in done.stderr)
    assert "serving on" not in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_serve_ends_with_status_2_when_the_runtime_cannot_be_built(tmp_path):
    # Without --cpu or a GPU flag the device flags are checked by the background build (it needs
    # torch to list devices); its failure must still end the server with the message.
    cmd = serve_command() + ["--port", "0", "--base-directory", str(tmp_path), "--workers", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "--workers" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


# -- poisoned state from an older version -----------------------------------------------------------

def test_poisoned_history_and_queue_rows_are_repaired_or_finished_at_start_up(models_base, tmp_path):
    base = tmp_path / "base"
    testnodes.install(base)
    db_path = base / "user" / "diffmesh" / "queue.sqlite3"
    with ServerProcess(base, "--models-dir", str(models_base / "models")) as first:
        first.wait_ready()
        with first.client() as http:
            pid = http.post("/api/prompt", json={"prompt": SLEEP}).json()["prompt_id"]
            wait_for_history(http, pid)
    with sqlite3.connect(db_path) as db:   # what an older version let in
        entry = json.loads(db.execute("SELECT entry FROM history WHERE prompt_id = ?", (pid,)).fetchone()[0])
        entry["prompt"][3]["bad"] = float("nan")
        db.execute("UPDATE history SET entry = ? WHERE prompt_id = ?", (json.dumps(entry), pid))
        db.execute("INSERT INTO history (prompt_id, entry) VALUES ('garbage', '{not json')")
        db.execute("INSERT INTO queue (prompt_id, number, state, prompt, extra_data, outputs, sensitive, created)"
                   " VALUES ('poisoned', 99, 'pending', ?, ?, '[\"1\"]', '{}', 0)",
                   (json.dumps({"1": {"class_type": "Sleep", "inputs": {"seconds": float("inf")}}}),
                    json.dumps({"x": float("-inf")})))
    with ServerProcess(base, "--models-dir", str(models_base / "models")) as second:
        second.wait_ready()
        with second.client() as http:
            assert http.get("/api/queue").status_code == 200
            history = http.get("/api/history")
            assert history.status_code == 200, history.text
            assert history.json()[pid]["prompt"][3]["bad"] is None
            assert "garbage" not in history.json()
            poisoned = wait_for_history(http, "poisoned")
            assert poisoned["status"]["status_str"] == "error" and poisoned["status"]["completed"] is False
            assert "prompt.1.inputs.seconds" in json.dumps(poisoned["status"]["messages"])
            assert http.get("/api/history/poisoned").status_code == 200
