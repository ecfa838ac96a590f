"""How many of ComfyUI's official open-weight workflow templates diffmesh can run, weighted by the
templates' usage counts (issue 11's measure).

Reads the installed `comfyui-workflow-templates-json` package: its index.json (templates with
`openSource`, `usage`) and one UI workflow per template. Open-weight = `openSource` true or absent
(the older open-weight examples carry no flag); partner-API templates (`openSource: false`) are left
out. For each template three levels are reported, each as a usage-weighted share and a count:

- exists: every node class it uses (subgraph definitions included; frontend-only Note, MarkdownNote,
  Reroute, PrimitiveNode left out) is a diffmesh node;
- schema: and every input socket the workflow names exists on diffmesh's node (dynamic inputs
  such as `values.a` included) and the node has at least as many outputs as the workflow uses;
- validates: and the workflow converted to an API prompt by diffmesh's converter passes diffmesh's
  validation, apart from model-file combos (the files are not installed here).

Usage: python bench/template_coverage.py [--without extras_logic,extras_math,...] [--json out.json]
`--without` leaves core node modules out (to measure the figure before they existed).
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import tempfile
from importlib import resources
from pathlib import Path

from diffmesh.config.paths import Paths
from diffmesh.graph.validate import validate_prompt
from diffmesh.graph.workflow import VIRTUAL_NODES, ui_to_api
from diffmesh.nodes.registry import CORE_MODULES, NodeRegistry, _module_nodes

PACKAGE = "comfyui_workflow_templates_json"


def registry_without(excluded: set[str]) -> NodeRegistry:
    registry = NodeRegistry()
    for name in CORE_MODULES:
        if name not in excluded:
            for node in _module_nodes(importlib.import_module(f"diffmesh.nodes.{name}")):
                registry.add(node)
    return registry


def templates() -> list[tuple[dict, Path]]:
    """(index entry, workflow path) of every open-weight template with a workflow file."""
    folder = Path(str(resources.files(PACKAGE) / "templates"))
    entries = [t for category in json.loads((folder / "index.json").read_text()) for t in category["templates"]]
    return [(t, folder / f"{t['name']}.json") for t in entries
            if t.get("openSource") is not False and (folder / f"{t['name']}.json").is_file()]


def graph_nodes(workflow: dict) -> list[dict]:
    """Every real node of the workflow and of its subgraph definitions."""
    subgraphs = (workflow.get("definitions") or {}).get("subgraphs") or []
    ids = {s.get("id") for s in subgraphs}
    nodes = list(workflow.get("nodes") or []) + [n for s in subgraphs for n in s.get("nodes") or []]
    return [n for n in nodes if n.get("type") not in VIRTUAL_NODES and n.get("type") not in ids]


def schema_problems(node: dict, registry: NodeRegistry) -> list[str]:
    schema = registry[node["type"]].schema
    problems = [f"{node['type']}.{s['name']}: no such input" for s in node.get("inputs") or []
                if s.get("name") and schema.input(s["name"]) is None]
    used = [i for i, o in enumerate(node.get("outputs") or []) if o.get("links")]
    if used and max(used) >= len(schema.outputs):
        problems.append(f"{node['type']}: output {max(used)} used, {len(schema.outputs)} declared")
    return problems


def _file_combo(registry: NodeRegistry, prompt: dict, error: dict, node_id: str) -> bool:
    """An error about a combo listing model or input files (not installed here): not in the list, or
    refused by the node's own check (Load Image's missing file)."""
    if error["type"] not in ("value_not_in_list", "custom_validation_failed"):
        return False
    spec = registry[prompt[node_id]["class_type"]].schema.input(error["extra_info"].get("input_name", ""))
    return spec is not None and callable(spec.choices)


def validation_problems(workflow: dict, registry: NodeRegistry, paths) -> list[str]:
    try:
        prompt = ui_to_api(workflow, registry, paths)
        ok, error, _, node_errors = validate_prompt(prompt, registry, paths)
    except Exception as exc:  # noqa: BLE001 - a converter limit is a finding of this measure
        return [f"conversion: {type(exc).__name__}: {str(exc)[:160]}"]
    problems = [f"{entry['class_type']}: {e['type']} {e['details'][:80]}" for node_id, entry in node_errors.items()
                for e in entry["errors"] if not _file_combo(registry, prompt, e, node_id)]
    if not ok and not node_errors and error is not None:
        problems.append(f"{error['type']}: {error['message']}")
    return problems


def measure(registry: NodeRegistry, paths) -> dict:
    totals = collections.Counter()
    missing, missing_templates = collections.Counter(), collections.Counter()
    reasons: collections.Counter = collections.Counter()
    listed = []
    for entry, path in templates():
        usage = float(entry.get("usage") or 0)
        workflow = json.loads(path.read_text(encoding="utf-8"))
        nodes = graph_nodes(workflow)
        absent = sorted({n["type"] for n in nodes if n["type"] not in registry})
        totals["templates"] += 1
        totals["usage"] += usage
        level = "missing nodes"
        for name in absent:
            missing[name] += usage
            missing_templates[name] += 1
        if not absent:
            totals["exists"] += usage
            totals["exists_count"] += 1
            problems = [p for n in nodes for p in schema_problems(n, registry)]
            level = "schema differs"
            if not problems:
                totals["schema"] += usage
                totals["schema_count"] += 1
                problems = validation_problems(workflow, registry, paths)
                level = "validation fails"
                if not problems:
                    totals["validates"] += usage
                    totals["validates_count"] += 1
                    level = "validates"
            reasons.update(set(problems))
        listed.append({"name": entry["name"], "usage": usage, "level": level, "missing": absent})
    share = {k: round(100 * totals[k] / totals["usage"], 2) if totals["usage"] else 0.0
             for k in ("exists", "schema", "validates")}
    return {"templates": totals["templates"], "usage_total": totals["usage"], "share_percent": share,
            "counts": {k: totals[f"{k}_count"] for k in ("exists", "schema", "validates")},
            "most_used_missing": [{"node": n, "usage": u, "templates": missing_templates[n]}
                                  for n, u in missing.most_common(40)],
            "problems_among_complete": [{"problem": p, "templates": c} for p, c in reasons.most_common(25)],
            "templates_detail": listed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", default="", help="comma-separated core node modules to leave out")
    parser.add_argument("--json", help="write the full result here")
    args = parser.parse_args()
    excluded = {m for m in args.without.split(",") if m}
    registry = registry_without(excluded)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(registry, Paths.build(Path(tmp)))
    result["without_modules"] = sorted(excluded)
    result["nodes_registered"] = len(registry)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result.items() if k != "templates_detail"}
    summary["most_used_missing"] = summary["most_used_missing"][:20]
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
