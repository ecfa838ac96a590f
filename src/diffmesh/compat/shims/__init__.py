"""The look-alike modules by import name, each built by a function of the `CompatLayer`."""

from __future__ import annotations

from types import MappingProxyType

from diffmesh.compat.shims import comfy, comfy_api, folder_paths, nodes, server

BUILDERS = MappingProxyType({
    "folder_paths": folder_paths.build,
    "comfy": comfy.build_comfy,
    "comfy.utils": comfy.build_utils,
    "comfy.model_management": comfy.build_model_management,
    "comfy.comfy_types": comfy.build_comfy_types,
    "comfy.comfy_types.node_typing": comfy.build_node_typing,
    "comfy.samplers": comfy.build_samplers,
    "comfy.sd": comfy.build_sd,
    "nodes": nodes.build,
    "server": server.build_server,
    "aiohttp": server.build_aiohttp,
    "aiohttp.web": server.build_web,
    "comfy_api": comfy_api.build_root,
    "comfy_api.latest": comfy_api.build_latest,
    "comfy_api.latest.io": comfy_api.build_io,
    "comfy_api.latest.ui": comfy_api.build_ui,
})
PACKAGES = frozenset({"comfy", "comfy.comfy_types", "aiohttp", "comfy_api", "comfy_api.latest"})
# Roots whose other submodules fail with a message naming the supported subset.
ROOTS = frozenset({"comfy", "comfy_api", "comfy_extras", "comfy_execution", "comfy_api_nodes", "folder_paths",
                   "nodes", "server", "aiohttp", "latent_preview", "node_helpers", "execution"})
