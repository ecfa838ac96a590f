"""Custom nodes through `diffmesh serve` with the real runtime: a V1 node module in
`<base>/custom_nodes/` (and in a `--custom-nodes-dir`) shows in /object_info and runs from /prompt;
a module that fails to import is logged with its path and error, and the server serves anyway."""

from __future__ import annotations

import time

from serverproc import wait_for_history

GREETER = '''
class Greet:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "world"}), "times": ("INT", {"default": 1, "min": 1})},
                "optional": {"style": (["plain", "loud"],)}}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("greeting",)
    FUNCTION = "greet"
    CATEGORY = "examples"
    DESCRIPTION = "Says hello."

    def greet(self, name, times, style="plain"):
        text = " ".join([f"hello {name}"] * times)
        return (text.upper() if style == "loud" else text,)


class ShowText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"forceInput": True})}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "examples"

    def show(self, text):
        return {"ui": {"text": [text]}}


NODE_CLASS_MAPPINGS = {"Greet": Greet, "ShowText": ShowText}
NODE_DISPLAY_NAME_MAPPINGS = {"Greet": "Greet someone"}
'''


def _wait_for_line(server, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in server.lines if text in line]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no line with {text!r} in:\n" + "\n".join(server.lines))


def test_v1_custom_node_shows_in_object_info_and_runs_from_prompt(tmp_path, start_server):
    base = tmp_path / "base"
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "greeter.py").write_text(GREETER)
    with start_server(base) as server:
        server.wait_ready()
        with server.client() as http:
            info = http.get("/api/object_info").json()
            greet = info["Greet"]
            assert greet["python_module"] == "custom_nodes.greeter" and greet["display_name"] == "Greet someone"
            assert greet["input"]["optional"]["style"] == [["plain", "loud"]]
            assert greet["output_name"] == ["greeting"] and greet["description"] == "Says hello."
            assert info["Sleep"]["python_module"] == "custom_nodes.diffmesh_test_nodes"
            assert http.get("/api/object_info/ShowText").json()["ShowText"]["output_node"] is True
            prompt = {"1": {"class_type": "Greet", "inputs": {"name": "diffmesh", "times": 2, "style": "loud"}},
                      "2": {"class_type": "ShowText", "inputs": {"text": ["1", 0]}}}
            answer = http.post("/api/prompt", json={"prompt": prompt})
            assert answer.status_code == 200, answer.text
            entry = wait_for_history(http, answer.json()["prompt_id"])
            assert entry["status"]["status_str"] == "success"
            assert entry["outputs"] == {"2": {"text": ["HELLO DIFFMESH HELLO DIFFMESH"]}}
            bad = http.post("/api/prompt", json={"prompt": {**prompt, "1": {"class_type": "Greet",
                                                                           "inputs": {"name": "x", "times": 0}}}})
            assert bad.status_code == 400
            assert bad.json()["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"


def test_broken_custom_node_module_is_logged_and_skipped_and_the_server_starts(tmp_path, start_server):
    base = tmp_path / "base"
    (base / "custom_nodes" / "broken_pack").mkdir(parents=True)
    (base / "custom_nodes" / "broken_pack" / "__init__.py").write_text("raise RuntimeError('pack is broken')\n")
    extra = tmp_path / "more_nodes"
    extra.mkdir()
    (extra / "greeter.py").write_text(GREETER)
    with start_server(base, "--custom-nodes-dir", str(extra)) as server:
        server.wait_ready()
        with server.client() as http:
            info = http.get("/api/object_info").json()           # waits for the runtime
            assert "Greet" in info and "Sleep" in info and "KSampler" in info
            answer = http.post("/api/prompt", json={"prompt": {"1": {"class_type": "Sleep", "inputs": {}}}})
            assert wait_for_history(http, answer.json()["prompt_id"])["status"]["completed"] is True
        line = _wait_for_line(server, "cannot import custom nodes")
        assert str(base / "custom_nodes" / "broken_pack") in line and "RuntimeError: pack is broken" in line


def test_disable_all_custom_nodes_loads_none(tmp_path, start_server):
    with start_server(tmp_path / "base", "--disable-all-custom-nodes") as server:
        server.wait_ready()
        with server.client() as http:
            info = http.get("/api/object_info").json()
    assert "KSampler" in info and "Sleep" not in info
