"""Execution events (spec §3.2): names, and a recorder that forwards them to a sink.

A sink is any callable `sink(event, data)`; the server turns events into websocket messages, the
CLI into a progress bar. The recorder keeps the messages ComfyUI stores in history
(`status.messages`: start, cached, success / error / interrupted, each with a timestamp).
"""

from __future__ import annotations

import time
from typing import Any, Callable

EXECUTION_START = "execution_start"
EXECUTION_CACHED = "execution_cached"
EXECUTING = "executing"
PROGRESS = "progress"
PROGRESS_STATE = "progress_state"
EXECUTED = "executed"
EXECUTION_SUCCESS = "execution_success"
EXECUTION_ERROR = "execution_error"
EXECUTION_INTERRUPTED = "execution_interrupted"
PREVIEW = "preview"              # data: node, display_node, prompt_id, image (PIL), not JSON: binary frame

# Events ComfyUI builds with `add_message`: timestamped and recorded in the history entry.
RECORDED = frozenset({EXECUTION_START, EXECUTION_CACHED, EXECUTION_SUCCESS, EXECUTION_ERROR, EXECUTION_INTERRUPTED})

Sink = Callable[[str, dict], None]


def timestamp_ms() -> int:
    return int(time.time() * 1000)


def null_sink(event: str, data: dict) -> None:
    return None


class EventRecorder:
    """Forwards events to a sink; timestamps and records the history messages."""

    def __init__(self, sink: Sink | None, prompt_id: str):
        self.sink = sink or null_sink
        self.prompt_id = prompt_id
        self.messages: list[list[Any]] = []

    def emit(self, event: str, **data: Any) -> None:
        data = {**data, "prompt_id": self.prompt_id} if "prompt_id" not in data else data
        if event in RECORDED:
            data["timestamp"] = timestamp_ms()
            self.messages.append([event, data])
        self.sink(event, data)
