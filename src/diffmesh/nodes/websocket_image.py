"""SaveImageWebsocket: ComfyUI's default custom node (`custom_nodes/websocket_image_save.py`) that
sends each image of the batch to the client as a PNG at the image's own size, in the binary
preview frame (type 1, image type 2 = PNG; type 4 with metadata to clients that announced
`supports_preview_metadata`), whatever `--preview-method` says, and saves nothing.

ComfyUI sends it through its progress bar (`update_absolute(step, total, ("PNG", image, None))`);
here the node reports the same progress steps with the same preview tuple, which the server
(`server.events.PromptRun`) sends as a frame that a slow client never loses. Like ComfyUI, it is
loaded with the custom nodes, so `--disable-all-custom-nodes` leaves it out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from diffmesh.nodes.base import NodeContext, NodeDef, NodeSchema, inp


def save_images(ctx: NodeContext, images) -> dict:
    total = int(images.shape[0])
    for step, image in enumerate(images):
        pixels = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)    # (H, W, 3)
        ctx.progress(step, total, ("PNG", Image.fromarray(pixels), None))
    return {}


NODE = NodeDef(
    schema=NodeSchema(name="SaveImageWebsocket", display_name="Save Image (Websocket)", category="image",
                      inputs=(inp("images", "IMAGE"),), outputs=(), output_node=True,
                      python_module="custom_nodes.websocket_image_save"),
    execute=save_images,
    is_changed=lambda paths, **inputs: float("nan"),    # ComfyUI returns time.time(): never cached
)
NODES = ()      # not a core node: nodes.custom.load_into adds NODE with the custom nodes
