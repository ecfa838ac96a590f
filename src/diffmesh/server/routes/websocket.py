"""The /ws websocket (spec §3.1): status with sid on connect, feature flags, then events."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket


def router() -> APIRouter:
    r = APIRouter()
    r.add_api_websocket_route("/ws", websocket_endpoint)
    return r


async def websocket_endpoint(websocket: WebSocket):
    s = websocket.app.state.diffmesh

    def on_connect(sid: str) -> None:
        node = s.dispatcher.executing_node(sid)
        if node is not None:
            s.hub.send("executing", {"node": node}, sid)

    await s.hub.serve(websocket, s.dispatcher.queue_status, on_connect)
