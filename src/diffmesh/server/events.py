"""One prompt run as the clients see it: the executor's events go to the prompt's client (or to
everyone for progress when there is none), are recorded for the history entry, and latent
previews become binary frames (spec §3.2–3.3, §5.6).

The executor calls `sink(event, data)`. Besides ComfyUI's message types it may send a preview
as event `preview` with `image` (a PIL image, already approximated), or with a latent
(`x0` tensor (B,C,h,w) in the scaled latent space, optional `latent_format`), or put `x0` on a
`progress` event. The effective preview method is in `extra_data["preview_method"]`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from diffmesh.server import preview as previews
from diffmesh.server.ws import preview_frame

log = logging.getLogger("diffmesh.server.events")

RECORDED = ("execution_start", "execution_cached", "execution_success", "execution_error",
            "execution_interrupted")
BROADCAST_WITHOUT_CLIENT = ("progress", "progress_state", "execution_interrupted")
PREVIEW_EVENTS = ("preview", "latent_preview")
LATENT_KEYS = ("x0", "denoised", "preview_latent")


class PromptRun:
    def __init__(self, item, hub, server_config):
        self.item = item
        self.hub = hub
        self.config = server_config
        self.prompt_id = item.prompt_id
        self.client_id = item.extra_data.get("client_id")
        self.preview_method = previews.resolve_method(item.extra_data, server_config.preview_method)
        self.current_node: str | None = None
        self.messages: list[list] = []
        self.outputs: dict[str, dict] = {}
        self.meta: dict[str, dict] = {}
        self.final: str | None = None  # success | error | interrupted

    # -- sending ------------------------------------------------------------------------------

    def send(self, event: str, data: dict) -> None:
        if self.client_id:
            self.hub.send(event, data, self.client_id)
        elif event in BROADCAST_WITHOUT_CLIENT:
            self.hub.broadcast(event, data)

    def sink(self, event: str, data: dict | None = None) -> None:
        """Called by the executor (any thread) for every event of this prompt."""
        data = dict(data or {})
        try:
            if event in PREVIEW_EVENTS:
                self._preview(data)
                return
            latent = next((data.pop(k) for k in LATENT_KEYS if k in data), None)
            if latent is not None:
                self._preview({"node": data.get("node"), "x0": latent})
            data.setdefault("prompt_id", self.prompt_id)
            self._track(event, data)
            self.send(event, data)
        except Exception:  # a broken event must never break the run
            log.exception("could not forward event %s of prompt %s", event, self.prompt_id)

    def _track(self, event: str, data: dict) -> None:
        if event in RECORDED:
            data.setdefault("timestamp", int(time.time() * 1000))
            self.messages.append([event, dict(data)])
            if event != "execution_start" and event != "execution_cached":
                self.final = event.removeprefix("execution_")
        elif event == "executing":
            node = data.get("node")
            self.current_node = node
            if node is not None:
                data.setdefault("display_node", node)
        elif event == "executed" and data.get("node") is not None:
            node = str(data["node"])
            data.setdefault("display_node", node)
            output = data.get("output") or {}
            if data.get("merge") and node in self.outputs:
                for key, value in output.items():
                    self.outputs[node][key] = list(self.outputs[node].get(key, [])) + list(value)
            else:
                self.outputs[node] = dict(output)
            self.meta[node] = {"node_id": node, "display_node": data.get("display_node", node),
                               "parent_node": data.get("parent_node"), "real_node_id": data.get("real_node_id", node)}

    def _preview(self, data: dict) -> None:
        image = data.get("image")
        if isinstance(image, tuple):             # ComfyUI's (format, PIL image, max size or None)
            if image[2] is None:                 # full size: a node's output image (SaveImageWebsocket)
                self._node_image(data)
                return
            data = {**data, "image": image[1]}   # a bounded preview, like the executor's own
        if self.preview_method not in previews.ENABLED_METHODS:
            return
        if not (self.client_id and self.hub.client(self.client_id)):
            return
        image = data.get("image")
        if image is not None:
            jpeg = previews.image_to_jpeg(image, self.config.preview_size)
        else:
            latent = next((data[k] for k in LATENT_KEYS if data.get(k) is not None), None)
            if latent is None:
                return
            jpeg = previews.latent_to_jpeg(latent, self.config.preview_size, data.get("latent_format"))
        if jpeg is None:
            return
        metadata = self._frame_metadata(data)
        self.hub.send_bytes(lambda client: preview_frame(client, jpeg, "image/jpeg", metadata), self.client_id)

    def _frame_metadata(self, data: dict) -> dict:
        node = str(data.get("node") or self.current_node or "")
        display = str(data.get("display_node") or node)
        return {"node_id": node, "prompt_id": self.prompt_id, "display_node_id": display,
                "parent_node_id": data.get("parent_node"), "real_node_id": data.get("real_node_id", node)}

    def _node_image(self, data: dict) -> None:
        """A full-size image a node sends itself (ComfyUI's progress-bar preview `(format, image,
        None)`, e.g. SaveImageWebsocket's PNG): sent in its format whatever the preview method,
        type 1 (or type 4 for clients that announced preview metadata), never dropped; to the
        prompt's client, or to every client when the prompt has none (ComfyUI's sid None)."""
        image_format, image, max_size = data["image"]
        encoded, mime = previews.encode_node_image(image, image_format, max_size)
        metadata = self._frame_metadata(data)
        self.hub.send_bytes(lambda client: preview_frame(client, encoded, mime, metadata), self.client_id,
                            droppable=False)

    # -- end of run ---------------------------------------------------------------------------

    def report_crash(self, exc: BaseException, tb: list[str]) -> None:
        """The executor itself raised: tell the client as an execution_error with no node."""
        name = type(exc).__module__ + "." + type(exc).__qualname__
        self.sink("execution_error", {
            "node_id": None, "node_type": None, "executed": [], "exception_message": str(exc),
            "exception_type": name.removeprefix("builtins."), "traceback": tb, "current_inputs": {},
            "current_outputs": []})

    def history_entry(self, result: Any) -> dict:
        """ComfyUI's history entry from what the executor returned and what we saw."""
        status = str(getattr(result, "status", None) or self.final or "error")
        if status in ("interrupted", "execution_interrupted"):
            status = "interrupted"
        success = status in ("success", "execution_success")
        messages = getattr(result, "messages", None) or self.messages
        outputs = getattr(result, "outputs", None)
        meta = getattr(result, "meta", None)
        return {
            "prompt": self.item.as_wire(),
            "outputs": outputs if outputs else self.outputs,
            "status": {"status_str": "success" if success else "error", "completed": success,
                       "messages": [list(m) for m in messages]},
            "meta": meta if meta else self.meta,
        }
