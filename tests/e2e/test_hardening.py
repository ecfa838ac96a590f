"""Hostile requests against a real `diffmesh serve` process (issue 8): each gets a 4xx that names
what is wrong, nothing hostile is stored, and the queue, history and file routes keep answering
for everyone else. Security flags (Host check, CORS, content types, token) are in
test_hardening_security.py."""

from __future__ import annotations

import io
import sqlite3
import time
from urllib.parse import quote

import pytest
import testnodes
from serverproc import ServerProcess, wait_for_history

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(models_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("hardening") / "base"
    testnodes.install(base)
    with ServerProcess(base, "--models-dir", str(models_base / "models"), "--max-history", "3") as proc:
        proc.wait_ready()
        yield proc


def _still_serving(http) -> None:
    """The routes one poisoned entry used to take away from every user."""
    for route in ("/api/queue", "/api/history", "/api/object_info", "/api/prompt"):
        response = http.get(route)
        assert response.status_code == 200, (route, response.text[:300])


def _wait_idle(http, ids: list[str], timeout: float = 120.0) -> None:
    """Until none of `ids` is queued or running (history keeps only the last 3 here)."""
    deadline = time.monotonic() + timeout
    while set(ids) & set(_queued_ids(http)):
        assert time.monotonic() < deadline, "prompts did not finish"
        time.sleep(0.05)
    wait_for_history(http, ids[-1])


def _queued_ids(http) -> list[str]:
    queue = http.get("/api/queue").json()
    return [item[1] for item in queue["queue_running"] + queue["queue_pending"]]


# -- non-finite numbers ------------------------------------------------------------------------

NON_FINITE = ["Infinity", "-Infinity", "NaN", "1e400", "-1e999"]
PLACES = {
    "prompt.1.inputs.seconds": '{"prompt": {"1": {"class_type": "Sleep", "inputs": {"seconds": %s}}}}',
    "extra_data.extra_pnginfo.workflow.x": '{"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}, '
                                           '"extra_data": {"extra_pnginfo": {"workflow": {"x": [1, %s]}}}}',
    "number": '{"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}, "number": %s}',
}


@pytest.mark.parametrize("literal", NON_FINITE)
@pytest.mark.parametrize("field", list(PLACES))
def test_non_finite_numbers_are_refused_naming_the_field_and_never_stored(server, field, literal):
    body = PLACES[field] % literal
    with server.client() as http:
        before = _queued_ids(http)
        response = http.post("/api/prompt", content=body.encode(), headers=JSON)
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_json"
        assert field in error["message"] + error["details"]
        assert "finite" in error["message"]
        assert _queued_ids(http) == before
        _still_serving(http)


def test_non_finite_numbers_are_refused_by_every_json_route(server):
    with server.client() as http:
        for route in ("/api/settings", "/api/settings/a.b", "/api/queue", "/api/history", "/api/free"):
            response = http.post(route, content=b'{"a": [NaN]}', headers=JSON)
            assert response.status_code == 400, (route, response.text)
            assert "a[0]" in response.json()["error"]["message"] + response.json()["error"]["details"], route
        assert "a.b" not in http.get("/api/settings").json()


# -- the prompt's structure ----------------------------------------------------------------------

BAD_SHAPES = [
    ({"1": {"class_type": ["Sleep"], "inputs": {}}}, "prompt.1.class_type"),
    ({"1": {"class_type": {"a": 1}, "inputs": {}}}, "prompt.1.class_type"),
    ({"1": {"class_type": "Sleep", "inputs": None}}, "prompt.1.inputs"),
    ({"1": {"class_type": "Sleep", "inputs": []}}, "prompt.1.inputs"),
    ({"1": {"class_type": "Sleep", "inputs": "seconds"}}, "prompt.1.inputs"),
    ({"1": "Sleep"}, "prompt.1"),
    ({"1": None}, "prompt.1"),
    ({"1": {"class_type": "Sleep", "inputs": {"seconds": ["2", "x"]}}}, "prompt.1.inputs.seconds"),
    ({"1": {"class_type": "Sleep", "inputs": {"seconds": [2]}}}, "prompt.1.inputs.seconds"),
    ({"1": {"class_type": "Sleep", "inputs": {"seconds": ["2", 0, 1]}}}, "prompt.1.inputs.seconds"),
    ({"1": {"class_type": "Sleep", "inputs": {"seconds": [True, 0]}}}, "prompt.1.inputs.seconds"),
    ({"1": {"class_type": "Sleep", "inputs": {"seconds": [["2"], 0]}}}, "prompt.1.inputs.seconds"),
    ({"1": {"class_type": "Sleep", "inputs": {"seconds": ["2", -1]}}}, "prompt.1.inputs.seconds"),
    ({"1": {"class_type": "Sleep", "inputs": {"seconds": ["2", 0.5]}}}, "prompt.1.inputs.seconds"),
]


@pytest.mark.parametrize("prompt,where", BAD_SHAPES, ids=[w + "-" + str(i) for i, (_, w) in enumerate(BAD_SHAPES)])
def test_malformed_prompt_structure_is_400_in_comfyui_shape_naming_the_place(server, prompt, where):
    with server.client() as http:
        response = http.post("/api/prompt", json={"prompt": prompt})
        assert response.status_code == 400, response.text
        body = response.json()
        assert set(body) == {"error", "node_errors"}
        assert set(body["error"]) == {"type", "message", "details", "extra_info"}
        assert where in body["error"]["message"] + body["error"]["details"]
        _still_serving(http)


def test_structure_errors_in_client_id_prompt_id_and_extra_data_are_400(server):
    with server.client() as http:
        ok = {"1": {"class_type": "Sleep", "inputs": {}}}
        for body in ({"prompt": ok, "extra_data": [1]}, {"prompt": ok, "prompt_id": {"a": 1}},
                     {"prompt": ok, "client_id": ["x"]}, {"prompt": ok, "number": "abc"},
                     {"prompt": ok, "partial_execution_targets": "1"}, {"prompt": ok, "front": {"a": 1}}):
            response = http.post("/api/prompt", json=body)
            assert response.status_code == 400, (body, response.text)
        _still_serving(http)


def test_deep_nesting_is_refused_anywhere_in_any_json_body(server):
    deep_list = "[" * 5000 + "]" * 5000
    deep_object = '{"a":' * 5000 + "1" + "}" * 5000
    with server.client() as http:
        for body in (deep_list, deep_object,
                     '{"prompt": {"1": {"class_type": "Sleep", "inputs": {"seconds": %s}}}}' % deep_list,
                     '{"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}, "extra_data": %s}' % deep_object):
            response = http.post("/api/prompt", content=body.encode(), headers=JSON)
            assert response.status_code == 400, response.text[:300]
            assert "nested" in response.json()["error"]["message"]
        for route in ("/api/settings", "/api/settings/x", "/api/queue", "/api/history", "/api/free",
                      "/api/interrupt"):
            response = http.post(route, content=deep_list.encode(), headers=JSON)
            assert response.status_code in (200, 400), (route, response.status_code)  # interrupt ignores bodies
        _still_serving(http)


# -- unicode file names --------------------------------------------------------------------------

def _png(colour=(10, 20, 30)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGBA", (4, 4), colour + (255,)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("name", ["猫.png", "emoji😀.png", "naïve \"quoted\";.png", "tab\tname.png"])
def test_any_upload_name_can_be_viewed_with_an_rfc5987_content_disposition(server, name):
    data = _png()
    with server.client() as http:
        uploaded = http.post("/api/upload/image", files={"image": (name, data, "image/png")})
        assert uploaded.status_code == 200, uploaded.text
        stored = uploaded.json()["name"]
        for extra in ("", "&channel=rgb", "&preview=webp;80"):
            response = http.get(f"/api/view?filename={quote(stored)}&type=input{extra}")
            assert response.status_code == 200, (extra, response.text[:300])
            disposition = response.headers["content-disposition"]
            assert f"filename*=UTF-8''{quote(stored, safe='')}" in disposition
            disposition.encode("latin-1")                      # a valid header value
        assert http.get(f"/api/view?filename={quote(stored)}&type=input").content == data


# -- OSErrors of the file routes -----------------------------------------------------------------

def test_file_routes_turn_filesystem_conflicts_into_400_or_409(server):
    base = server.base
    with server.client() as http:
        assert http.post("/api/upload/image", files={"image": ("plain.png", _png(), "image/png")}).status_code == 200
        under_file = http.post("/api/upload/image", files={"image": ("x.png", _png(), "image/png")},
                               data={"subfolder": "plain.png"})
        assert under_file.status_code in (400, 409), under_file.text
        (base / "input" / "folder.png").mkdir()
        onto_folder = http.post("/api/upload/image", files={"image": ("folder.png", _png(), "image/png")},
                                data={"overwrite": "true"})
        assert onto_folder.status_code in (400, 409), onto_folder.text
        assert http.post("/api/userdata/workflows%2Fa.json", content=b"{}").status_code == 200
        below_file = http.post("/api/userdata/workflows%2Fa.json%2Fb.json", content=b"{}")
        assert below_file.status_code in (400, 409), below_file.text
        (base / "user" / "default" / "workflows" / "dir.json").mkdir()
        move_onto_folder = http.post("/api/userdata/workflows%2Fa.json/move/workflows%2Fdir.json")
        assert move_onto_folder.status_code in (400, 409), move_onto_folder.text
        move_under_file = http.post("/api/userdata/workflows%2Fa.json/move/workflows%2Fa.json%2Fc.json")
        assert move_under_file.status_code in (400, 409), move_under_file.text
        write_onto_folder = http.post("/api/userdata/workflows%2Fdir.json", content=b"{}")
        assert write_onto_folder.status_code in (400, 409), write_onto_folder.text
        delete_folder = http.delete("/api/userdata/workflows")
        assert delete_folder.status_code in (400, 404, 409), delete_folder.text
        listing = http.get("/api/userdata?dir=workflows%2Fa.json")
        assert listing.status_code in (400, 404), listing.text
        v2 = http.get("/api/v2/userdata?path=workflows%2Fa.json")
        assert v2.status_code in (400, 404), v2.text
        mask = http.post("/api/upload/mask", files={"image": ("m.png", _png(), "image/png")},
                         data={"original_ref": '{"filename": "x.png", "subfolder": "plain.png", "type": "input"}'})
        assert mask.status_code in (400, 404, 409), mask.text
        _still_serving(http)


# -- history cap ---------------------------------------------------------------------------------

def test_history_keeps_at_most_max_history_entries(server):
    with server.client() as http:
        ids = [http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}}).json()["prompt_id"]
               for _ in range(5)]
        _wait_idle(http, ids)
        history = http.get("/api/history").json()
    assert list(history)[-3:] == ids[-3:] and len(history) == 3


# -- sensitive extra_data ------------------------------------------------------------------------

def test_sensitive_extra_data_keys_never_reach_sqlite_or_the_api(server):
    secret = "KEY-do-not-store-7f3a"
    with server.client() as http:
        answer = http.post("/api/prompt", json={
            "prompt": {"1": {"class_type": "Sleep", "inputs": {"seconds": 1.0}}},
            "extra_data": {"api_key_comfy_org": secret, "auth_token_comfy_org": secret + "-t"}})
        assert answer.status_code == 200, answer.text
        pid = answer.json()["prompt_id"]
        assert secret not in http.get("/api/queue").text
        entry = wait_for_history(http, pid)
        assert entry["status"]["completed"] is True
        assert secret not in http.get("/api/history").text
    folder = server.base / "user" / "diffmesh"
    for path in folder.iterdir():
        assert secret.encode() not in path.read_bytes(), path
    with sqlite3.connect(folder / "queue.sqlite3") as db:
        rows = db.execute("SELECT * FROM queue").fetchall() + db.execute("SELECT * FROM history").fetchall()
    assert all(secret not in str(row) for row in rows)


# -- a client that stops reading -----------------------------------------------------------------

def test_a_stalled_websocket_client_loses_previews_not_the_servers_memory(server):
    import json as _json
    import socket

    from websocket import create_connection

    stalled = create_connection(server.ws_url + "?clientId=stalled", timeout=30,
                                sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    stalled.recv()
    stalled.send(_json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
    try:                    # from here on the client reads nothing
        with server.client() as http:
            ids = [http.post("/api/prompt", json={
                "prompt": {"1": {"class_type": "Sleep", "inputs": {"preview_size": 512}}}, "client_id": "stalled",
                "extra_data": {"preview_method": "latent2rgb"}}).json()["prompt_id"] for _ in range(30)]
            _wait_idle(http, ids)
            queues = http.get("/api/system_stats").json()["diffmesh"]["websocket"]
            _still_serving(http)
    finally:
        stalled.close()
    print(f"\nstalled client: {queues}")
    assert queues["dropped_previews"] > 0
    assert queues["queued_bytes"] <= queues["limits"]["bytes"]
    assert queues["queued_frames"] <= queues["limits"]["frames"]


def test_a_client_that_never_reads_is_closed_once_its_events_pass_the_hard_limit(server):
    import socket

    from websocket import create_connection

    stalled = create_connection(server.ws_url + "?clientId=frozen", timeout=30,
                                sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    try:
        with server.client() as http:
            before = http.get("/api/system_stats").json()["diffmesh"]["websocket"]["dropped_clients"]
            body = {"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}, "client_id": "frozen"}
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:      # ~12 events per prompt, all to the frozen client
                ids = [http.post("/api/prompt", json=body).json()["prompt_id"] for _ in range(50)]
                _wait_idle(http, ids)
                queues = http.get("/api/system_stats").json()["diffmesh"]["websocket"]
                assert queues["queued_frames"] <= queues["limits"]["frames"]
                if queues["dropped_clients"] > before:
                    break
            else:
                pytest.fail(f"the frozen client was never closed: {queues}")
            _still_serving(http)
    finally:
        stalled.close()
