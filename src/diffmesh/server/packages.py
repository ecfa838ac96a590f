"""The web UI's packages: the pinned frontend, its workflow templates and embedded node docs, found
where pip installed them, and their versions for `/system_stats`.

The pins are the frontend and the templates and docs released with it (all three on 2026-10-26),
as ComfyUI pins them together in its requirements.txt. The templates meta-package
(`comfyui-workflow-templates`) pulls about 525 MB of thumbnail bundles; diffmesh depends only on
its `-core` (the manifest) and `-json` parts (every workflow and the index, 4 MB), so the template
browser lists and opens every template offline; thumbnails appear when the media bundles are
installed (`pip install comfyui-workflow-templates==TEMPLATES_VERSION`, or `diffmesh[templates]`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.resources
import logging
from pathlib import Path

log = logging.getLogger("diffmesh.server")

FRONTEND = "comfyui-frontend-package"
FRONTEND_VERSION = "1.58.1"
TEMPLATES = "comfyui-workflow-templates"
TEMPLATES_VERSION = "0.11.97"
DOCS = "comfyui-embedded-docs"
DOCS_VERSION = "0.5.15"
# module that holds each bundle's files, as the templates manifest names the bundles
TEMPLATE_JSON_MODULE = "comfyui_workflow_templates_json"
TEMPLATE_MANIFEST_MODULE = "comfyui_workflow_templates_core"


def installed(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_dir(module: str) -> Path | None:
    try:
        return Path(str(importlib.resources.files(module)))
    except ModuleNotFoundError:
        return None


def system_fields() -> dict:
    """The `/system_stats` fields about the UI packages, as ComfyUI reports them."""
    return {
        "required_frontend_version": FRONTEND_VERSION,
        "installed_templates_version": installed(TEMPLATES),
        "required_templates_version": TEMPLATES_VERSION,
        "comfy_package_versions": [{"name": name, "installed": installed(name), "required": version}
                                   for name, version in ((FRONTEND, FRONTEND_VERSION), (TEMPLATES, TEMPLATES_VERSION),
                                                         (DOCS, DOCS_VERSION))],
    }


def docs_root() -> Path | None:
    """The embedded node documentation (`<NodeClass>/<locale>.md` and images), served at `/docs`."""
    root = _module_dir("comfyui_embedded_docs")
    return root / "docs" if root is not None and (root / "docs").is_dir() else None


def template_assets() -> dict[str, Path]:
    """File name → path of every template file that is installed: the workflows and indexes from the
    json part, thumbnails from whichever media bundles are installed (the manifest says which
    bundle holds a file). ComfyUI serves the same names at `/templates/<name>`."""
    assets: dict[str, Path] = {}
    json_dir = _module_dir(TEMPLATE_JSON_MODULE)
    if json_dir is not None and (json_dir / "templates").is_dir():
        assets.update({p.name: p for p in (json_dir / "templates").iterdir() if p.is_file()})
    manifest = _manifest()
    if manifest is None:
        return assets
    bundle_dirs: dict[str, Path | None] = {}
    for entry in manifest.templates.values():
        for asset in entry.assets:
            if asset.filename in assets:
                continue
            bundle = asset.bundle or entry.bundle
            if bundle not in bundle_dirs:
                module = _bundle_module(bundle)
                bundle_dirs[bundle] = _module_dir(module) if module else None
            folder = bundle_dirs[bundle]
            if folder is not None and (folder / "templates" / asset.filename).is_file():
                assets[asset.filename] = folder / "templates" / asset.filename
    return assets


def _manifest():
    try:
        core = importlib.import_module(TEMPLATE_MANIFEST_MODULE)
        return core.load_manifest()
    except (ImportError, ValueError, KeyError, OSError) as exc:
        log.info("workflow template thumbnails are not served: %s", exc)
        return None


def _bundle_module(bundle: str) -> str | None:
    try:
        loader = importlib.import_module(TEMPLATE_MANIFEST_MODULE + ".loader")
    except ImportError:
        return None
    return getattr(loader, "BUNDLE_PACKAGE_MAP", {}).get(bundle)
