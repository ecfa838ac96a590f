"""What the current frontend reads besides the jobs API, on a real `diffmesh serve`: the pinned
frontend and its template and docs packages served where ComfyUI serves them (offline), the
`/system_stats` version fields, the `/features` keys, and the newer `/object_info` fields (also
from a custom node that declares them)."""

from __future__ import annotations

import importlib.metadata

from diffmesh.nodes.custom import adapt_v1_class
from diffmesh.server import packages


def test_the_pinned_frontend_templates_and_docs_are_installed():
    assert importlib.metadata.version(packages.FRONTEND) == packages.FRONTEND_VERSION
    assert importlib.metadata.version(packages.DOCS) == packages.DOCS_VERSION
    assert importlib.metadata.version("comfyui-workflow-templates-json") is not None


def test_template_browser_files_and_node_docs_are_served_offline(node_server):
    with node_server.client() as http:
        index = http.get("/templates/index.json")
        assert index.status_code == 200
        categories = index.json()
        names = [t["name"] for c in categories for t in c.get("templates", [])]
        assert len(names) > 100
        workflow = http.get(f"/templates/{names[0]}.json")
        assert workflow.status_code == 200 and "nodes" in workflow.json()
        assert http.get("/templates/index.fr.json").status_code == 200
        missing = http.get("/templates/no-such-template.json")
        assert missing.status_code == 404
        doc = http.get("/docs/KSampler/en.md")
        assert doc.status_code == 200 and "KSampler" in doc.text
        assert http.get("/docs/NoSuchNode/en.md").status_code == 404


def test_system_stats_and_features_carry_what_the_frontend_reads(node_server):
    with node_server.client() as http:
        system = http.get("/api/system_stats").json()["system"]
        features = http.get("/api/features").json()
    assert system["required_frontend_version"] == packages.FRONTEND_VERSION
    assert system["required_templates_version"] == packages.TEMPLATES_VERSION
    assert system["comfyui_version"] and system["deploy_environment"] == "local"
    versions = {p["name"]: (p["installed"], p["required"]) for p in system["comfy_package_versions"]}
    assert versions[packages.FRONTEND] == (packages.FRONTEND_VERSION, packages.FRONTEND_VERSION)
    assert versions[packages.DOCS] == (packages.DOCS_VERSION, packages.DOCS_VERSION)
    assert features["assets"] is False and features["node_replacements"] is False
    assert features["supports_preview_metadata"] is True and features["max_upload_size"] > 0


def test_object_info_has_the_newer_fields_in_comfyui_order(node_server):
    with node_server.client() as http:
        info = http.get("/api/object_info/KSampler").json()["KSampler"]
    keys = list(info)
    assert keys.index("is_input_list") == keys.index("input_order") + 1
    assert keys.index("has_intermediate_output") == keys.index("output_node") + 1
    assert info["is_input_list"] is False and info["has_intermediate_output"] is False
    assert info["search_aliases"] == ["sampler", "sample", "generate", "denoise", "diffuse", "txt2img", "img2img"]
    assert "dev_only" not in info and "essentials_category" not in info


def test_a_custom_node_declares_aliases_essentials_dev_only_and_list_input():
    class Tagged:
        INPUT_IS_LIST = True
        HAS_INTERMEDIATE_OUTPUT = True
        SEARCH_ALIASES = ["tag", "label"]
        ESSENTIALS_CATEGORY = "Basics"
        DEV_ONLY = True
        RETURN_TYPES = ("STRING",)
        FUNCTION = "run"
        CATEGORY = "tests"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"text": ("STRING", {})}}

        def run(self, text):
            return (text,)

    info = adapt_v1_class("Tagged", Tagged).schema.to_object_info(None)
    assert info["is_input_list"] is True and info["has_intermediate_output"] is True
    assert info["search_aliases"] == ["tag", "label"] and info["essentials_category"] == "Basics"
    assert info["dev_only"] is True
    assert list(info)[-3:] == ["dev_only", "search_aliases", "essentials_category"]
