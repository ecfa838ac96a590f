"""The modules ComfyUI custom nodes import, as a thin room of their own (STYLE rule 12).

Published node packs `import folder_paths`, `comfy.utils`, `comfy.model_management`, `nodes`,
`server` and `comfy_api.latest`. `CompatLayer` builds look-alikes of the supported subset
(docs/custom_nodes.md) backed by diffmesh's own objects — the runtime's `Paths`, its node
registry, the running node's `NodeContext` — and makes them importable only inside
`CompatLayer.active()`: the custom-node loader enters it while a pack imports, the V1/V3 adapters
while a pack's node runs, and the server while a pack's own HTTP route runs. Outside, `import
comfy` fails as it should. `PackServer` is the server half: the pack routes, web folders and the
websocket hub that `server.PromptServer.instance` talks to.

Only `diffmesh.nodes.custom` (the loader) and `diffmesh.server.routes.extensions` (the HTTP edge)
import this package.
"""

from diffmesh.compat.layer import CompatLayer
from diffmesh.compat.pack_server import PackServer

__all__ = ["CompatLayer", "PackServer"]
