"""`/global_subgraphs` on a real `diffmesh serve`, answered as ComfyUI's subgraph manager answers:
custom-node packs' `subgraphs/*.json` and the blueprint folder, ids = sha256(source + path)."""

from __future__ import annotations

import hashlib
import json

BLUEPRINT = {"nodes": [], "links": [], "definitions": {"subgraphs": [{"id": "b1", "name": "Blur"}]}}


def _id(source: str, path) -> str:
    return hashlib.sha256(f"{source}{path.resolve().as_posix()}".encode()).hexdigest()


def test_global_subgraphs_lists_packs_and_blueprints_and_serves_their_data(tmp_path, start_server):
    base = tmp_path / "base"
    pack_file = base / "custom_nodes" / "my_pack" / "subgraphs" / "Upscale Twice.json"
    pack_file.parent.mkdir(parents=True)
    pack_file.write_text(json.dumps(BLUEPRINT))
    (base / "custom_nodes" / "my_pack" / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\n")
    blueprint = base / "blueprints" / "Image Blur.json"
    blueprint.parent.mkdir(parents=True)
    blueprint.write_text(json.dumps(BLUEPRINT))
    (base / "blueprints" / "notes.txt").write_text("not a blueprint")
    with start_server(base) as server:
        server.wait_ready()
        with server.client() as http:
            listing = http.get("/global_subgraphs").json()
            assert http.get("/api/global_subgraphs").json() == listing
            pack_id, blue_id = _id("custom_node", pack_file), _id("templates", blueprint)
            assert listing == {
                pack_id: {"source": "custom_node", "name": "Upscale Twice", "info": {"node_pack": "custom_nodes.my_pack"}},
                blue_id: {"source": "templates", "name": "Image Blur", "info": {"node_pack": "comfyui"}},
            }
            one = http.get(f"/api/global_subgraphs/{blue_id}")
            assert one.status_code == 200
            assert one.json() == {"source": "templates", "name": "Image Blur", "info": {"node_pack": "comfyui"},
                                  "data": json.dumps(BLUEPRINT)}
            unknown = http.get("/global_subgraphs/" + "0" * 64)
            assert unknown.status_code == 200 and unknown.json() is None


def test_global_subgraphs_is_an_empty_dict_without_blueprints(node_server):
    with node_server.client() as http:
        answer = http.get("/api/global_subgraphs")
        assert answer.status_code == 200 and answer.json() == {}
