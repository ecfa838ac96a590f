"""Websocket connections and the messages sent to them (spec §3).

`ConnectionHub` keeps one outbound asyncio queue per socket; `send`/`broadcast` may be called
from any thread (the dispatcher's worker thread) and keep per-socket order, because every
message goes through `loop.call_soon_threadsafe`, which runs callbacks first in, first out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import WebSocket, WebSocketDisconnect

log = logging.getLogger("diffmesh.server.ws")

# Binary event types (spec §3.3), sent as a 4-byte big-endian prefix.
PREVIEW_IMAGE = 1
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4
_QUEUE_LIMIT = 1024  # frames buffered per slow client before previews are dropped


@dataclass
class Client:
    sid: str
    queue: asyncio.Queue
    flags: dict = field(default_factory=dict)

    @property
    def wants_preview_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))


class ConnectionHub:
    """The open sockets by sid, and thread-safe sending to one or all of them."""

    def __init__(self, server_flags: dict):
        self.server_flags = server_flags
        self._clients: dict[str, Client] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def client(self, sid: str | None) -> Client | None:
        return self._clients.get(sid) if sid else None

    # -- sending (any thread) -----------------------------------------------------------------

    def send(self, event: str, data: dict, sid: str | None) -> None:
        """JSON message to the socket `sid`; nothing if it is not connected."""
        self._post(sid, json.dumps({"type": event, "data": data}, default=str), droppable=False)

    def broadcast(self, event: str, data: dict) -> None:
        self._post(None, json.dumps({"type": event, "data": data}, default=str), droppable=False)

    def send_bytes(self, payload: bytes | Callable[[Client], bytes | None], sid: str | None) -> None:
        """Binary frame; `payload` may be a function of the client (e.g. its preview format)."""
        self._post(sid, payload, droppable=True)

    def _post(self, sid: str | None, message: Any, droppable: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._deliver, sid, message, droppable)
        except RuntimeError:  # loop closed while shutting down
            pass

    def _deliver(self, sid: str | None, message: Any, droppable: bool) -> None:
        targets = list(self._clients.values()) if sid is None else [c for c in [self._clients.get(sid)] if c]
        for client in targets:
            frame = message(client) if callable(message) else message
            if frame is None:
                continue
            if client.queue.qsize() >= _QUEUE_LIMIT and droppable:
                continue
            client.queue.put_nowait(frame)

    # -- one connection (event loop) ----------------------------------------------------------

    async def serve(self, websocket: WebSocket, status: Callable[[], dict],
                    on_connect: Callable[[str], None] | None = None) -> None:
        """Accepts, sends `status` with the sid, answers `feature_flags`, pumps outbound frames."""
        await websocket.accept()
        sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
        old = self._clients.pop(sid, None)
        if old is not None:
            old.queue.put_nowait(None)  # ask the old writer to stop
        client = Client(sid=sid, queue=asyncio.Queue())
        self._clients[sid] = client
        client.queue.put_nowait(json.dumps({"type": "status", "data": {"status": status(), "sid": sid}}))
        if on_connect is not None:
            on_connect(sid)
        writer = asyncio.create_task(self._writer(websocket, client))
        try:
            await self._reader(websocket, client)
        finally:
            if self._clients.get(sid) is client:
                del self._clients[sid]
            client.queue.put_nowait(None)
            await asyncio.gather(writer, return_exceptions=True)

    async def _reader(self, websocket: WebSocket, client: Client) -> None:
        while True:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message.get("type") == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                continue
            try:
                body = json.loads(text)
            except ValueError:
                continue  # other client text is ignored (spec §3.1)
            if isinstance(body, dict) and body.get("type") == "feature_flags" and isinstance(body.get("data"), dict):
                client.flags = dict(body["data"])
                client.queue.put_nowait(json.dumps({"type": "feature_flags", "data": self.server_flags}))

    async def _writer(self, websocket: WebSocket, client: Client) -> None:
        while True:
            frame = await client.queue.get()
            if frame is None:
                return
            try:
                if isinstance(frame, bytes):
                    await websocket.send_bytes(frame)
                else:
                    await websocket.send_text(frame)
            except Exception as exc:  # the socket went away; the reader will notice too
                log.debug("websocket %s send failed: %s", client.sid, exc)
                return


def preview_frame(client: Client, image_bytes: bytes, image_type: str, metadata: dict) -> bytes:
    """Type 4 (with metadata) for clients that announced support, else legacy type 1 (spec §3.3)."""
    if client.wants_preview_metadata:
        meta = json.dumps({**metadata, "image_type": image_type}).encode()
        return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image_bytes
    fmt = 1 if image_type == "image/jpeg" else 2
    return struct.pack(">II", PREVIEW_IMAGE, fmt) + image_bytes
