"""Websocket connections and the messages sent to them (spec §3).

`ConnectionHub` keeps one outbound asyncio queue per socket; `send`/`broadcast` may be called
from any thread (the dispatcher's worker thread) and keep per-socket order, because every
message goes through `loop.call_soon_threadsafe`, which runs callbacks first in, first out.

Queues are bounded, so a client that stops reading costs the server a fixed amount of memory:
past `PREVIEW_LIMIT_*` its preview frames are dropped (it misses pictures, not events); past
`HARD_LIMIT_*` even events would pile up, so the socket is closed (the frontend reconnects and
reads the queue afresh).
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
PREVIEW_LIMIT_FRAMES = 64            # queued frames per client beyond which previews are dropped
PREVIEW_LIMIT_BYTES = 4 * 1024 * 1024
HARD_LIMIT_FRAMES = 4096             # queued frames per client beyond which it is disconnected
HARD_LIMIT_BYTES = 32 * 1024 * 1024


@dataclass
class Client:
    sid: str
    queue: asyncio.Queue
    flags: dict = field(default_factory=dict)
    queued_bytes: int = 0
    writer: asyncio.Task | None = None
    websocket: Any = None

    def put(self, frame: Any) -> None:
        self.queue.put_nowait(frame)
        self.queued_bytes += _size(frame)

    @property
    def wants_preview_metadata(self) -> bool:
        return bool(self.flags.get("supports_preview_metadata"))


class ConnectionHub:
    """The open sockets by sid, and thread-safe sending to one or all of them."""

    def __init__(self, server_flags: dict):
        self.server_flags = server_flags
        self._clients: dict[str, Client] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.dropped_previews = 0
        self.dropped_clients = 0

    def describe(self) -> dict:
        """What the queues hold now and what was dropped (for /system_stats)."""
        clients = list(self._clients.values())
        return {"clients": len(clients), "queued_frames": sum(c.queue.qsize() for c in clients),
                "queued_bytes": sum(c.queued_bytes for c in clients), "dropped_previews": self.dropped_previews,
                "dropped_clients": self.dropped_clients,
                "limits": {"preview_frames": PREVIEW_LIMIT_FRAMES, "preview_bytes": PREVIEW_LIMIT_BYTES,
                           "frames": HARD_LIMIT_FRAMES, "bytes": HARD_LIMIT_BYTES}}

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

    def send_bytes(self, payload: bytes | Callable[[Client], bytes | None], sid: str | None,
                   droppable: bool = True) -> None:
        """Binary frame; `payload` may be a function of the client (e.g. its preview format).
        Previews are `droppable` for a slow client; a node's output image (SaveImageWebsocket) is not."""
        self._post(sid, payload, droppable=droppable)

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
            frames, size = client.queue.qsize(), client.queued_bytes + _size(frame)
            if droppable and (frames >= PREVIEW_LIMIT_FRAMES or size > PREVIEW_LIMIT_BYTES):
                self.dropped_previews += 1
                continue
            if frames >= HARD_LIMIT_FRAMES or size > HARD_LIMIT_BYTES:
                self._drop(client)
                continue
            client.put(frame)

    def _drop(self, client: Client) -> None:
        """A client that reads nothing while events keep coming: free its queue and close it."""
        log.warning("websocket %s stopped reading (%d frames, %d bytes queued); closing it", client.sid,
                    client.queue.qsize(), client.queued_bytes)
        self.dropped_clients += 1
        if self._clients.get(client.sid) is client:
            del self._clients[client.sid]
        while not client.queue.empty():
            client.queue.get_nowait()
        client.queued_bytes = 0
        if client.writer is not None:
            client.writer.cancel()
        if client.websocket is not None:
            asyncio.ensure_future(_close_quietly(client.websocket))

    # -- one connection (event loop) ----------------------------------------------------------

    async def serve(self, websocket: WebSocket, status: Callable[[], dict],
                    on_connect: Callable[[str], None] | None = None) -> None:
        """Accepts, sends `status` with the sid, answers `feature_flags`, pumps outbound frames."""
        await websocket.accept()
        sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
        old = self._clients.pop(sid, None)
        if old is not None:
            old.queue.put_nowait(None)  # ask the old writer to stop
        client = Client(sid=sid, queue=asyncio.Queue(), websocket=websocket)
        self._clients[sid] = client
        client.put(json.dumps({"type": "status", "data": {"status": status(), "sid": sid}}))
        if on_connect is not None:
            on_connect(sid)
        writer = client.writer = asyncio.create_task(self._writer(websocket, client))
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
                client.put(json.dumps({"type": "feature_flags", "data": self.server_flags}))

    async def _writer(self, websocket: WebSocket, client: Client) -> None:
        while True:
            frame = await client.queue.get()
            if frame is None:
                return
            client.queued_bytes -= _size(frame)
            try:
                if isinstance(frame, bytes):
                    await websocket.send_bytes(frame)
                else:
                    await websocket.send_text(frame)
            except Exception as exc:  # the socket went away; the reader will notice too
                log.debug("websocket %s send failed: %s", client.sid, exc)
                return


def _size(frame: Any) -> int:
    return len(frame) if isinstance(frame, (bytes, str)) else 0


async def _close_quietly(websocket: WebSocket) -> None:
    try:
        await websocket.close(code=1013, reason="client too slow: events were piling up")
    except Exception:  # already closed or never opened
        pass


def preview_frame(client: Client, image_bytes: bytes, image_type: str, metadata: dict) -> bytes:
    """Type 4 (with metadata) for clients that announced support, else legacy type 1 (spec §3.3)."""
    if client.wants_preview_metadata:
        meta = json.dumps({**metadata, "image_type": image_type}).encode()
        return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + image_bytes
    fmt = 1 if image_type == "image/jpeg" else 2
    return struct.pack(">II", PREVIEW_IMAGE, fmt) + image_bytes
