"""ComfyUI's execution model through a real `diffmesh serve`: the execution-model test pack (lazy,
expanding incl. a while loop, async, list mapping) installed in `<base>/custom_nodes/`, prompts
posted to /prompt, results read from /history; `partial_execution_targets` as ComfyUI answers it."""

from __future__ import annotations

import shutil
from pathlib import Path

from serverproc import wait_for_history

PACK = Path(__file__).parents[1] / "unit" / "graph" / "packs" / "exec_model_pack"


def _show(source):
    return {"class_type": "ShowInt", "inputs": {"value": [source, 0]}}


PROMPT = {
    "1": {"class_type": "WhileOpen", "inputs": {"initial": 1}},
    "2": {"class_type": "IntConst", "inputs": {"value": 3}},
    "3": {"class_type": "IntAdd", "inputs": {"a": ["1", 1], "b": ["2", 0]}},
    "4": {"class_type": "IntLess", "inputs": {"a": ["3", 0], "b": 12}},
    "5": {"class_type": "WhileClose", "inputs": {"flow": ["1", 0], "condition": ["4", 0], "value": ["3", 0]}},
    "6": {"class_type": "AsyncDelay", "inputs": {"value": 100, "seconds": 0.05}},
    "7": {"class_type": "LazySwitch", "inputs": {"switch": True, "on_true": ["6", 0], "on_false": ["10", 0]}},
    "8": {"class_type": "DoubleByExpansion", "inputs": {"value": ["7", 0]}},
    "10": {"class_type": "AsyncFail", "inputs": {"value": 1}},      # never needed: never runs
    "11": {"class_type": "MakeList", "inputs": {"start": 1, "count": 3}},
    "12": {"class_type": "SumList", "inputs": {"values": ["11", 0]}},
    "20": _show("5"), "21": _show("8"), "22": _show("12"),
}


def test_lazy_expanding_async_and_list_nodes_run_from_prompt(tmp_path, start_server):
    base = tmp_path / "base"
    shutil.copytree(PACK, base / "custom_nodes" / "exec_model_pack")
    with start_server(base) as server:
        server.wait_ready()
        with server.client() as http:
            answer = http.post("/api/prompt", json={"prompt": PROMPT})
            assert answer.status_code == 200, answer.text
            entry = wait_for_history(http, answer.json()["prompt_id"])
            assert entry["status"]["status_str"] == "success", entry["status"]
            assert entry["outputs"] == {"20": {"value": [13]}, "21": {"value": [200]}, "22": {"value": [6]}}

            none = http.post("/api/prompt", json={"prompt": PROMPT, "partial_execution_targets": []})
            assert none.status_code == 400 and none.json()["error"]["type"] == "prompt_no_outputs"

            part = http.post("/api/prompt", json={"prompt": PROMPT, "partial_execution_targets": ["22"]})
            assert part.status_code == 200, part.text
            entry = wait_for_history(http, part.json()["prompt_id"])
            assert entry["outputs"] == {"22": {"value": [6]}}
