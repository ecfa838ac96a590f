"""Start and stop real `diffmesh serve` processes on loopback for the end-to-end tests and the
load benchmark."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def serve_command() -> list[str]:
    """`diffmesh serve` through the main CLI when it exists, else the server's own entry point."""
    if importlib.util.find_spec("diffmesh.cli") is not None:
        return [sys.executable, "-c", "import sys; from diffmesh.cli import main; sys.exit(main())", "serve"]
    return [sys.executable, "-m", "diffmesh.server.cli"]


class ServerProcess:
    """One server subprocess. `url` is known once it printed its address."""

    def __init__(self, base: Path, *args: str, listen: str = "127.0.0.1", token: str | None = None,
                 env: dict | None = None):
        self.base = Path(base)
        self.args = list(args)
        self.listen = listen
        self.token = token
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.printed_token: str | None = None
        self.lines: list[str] = []
        self.started_at = 0.0

    def start(self, timeout: float = 60.0) -> "ServerProcess":
        cmd = serve_command() + ["--listen", self.listen, "--port", "0", "--base-directory", str(self.base)]
        cmd += self.args
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **self.env}
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     cwd=str(REPO))
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while self.url is None:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited at start:\n" + "\n".join(self.lines))
            if time.monotonic() > deadline:
                raise RuntimeError("server printed no address:\n" + "\n".join(self.lines))
            time.sleep(0.02)
        return self

    def _pump(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            found = re.search(r"serving on (http://\S+)", line)
            if found:
                self.url = found.group(1)
            found = re.match(r"diffmesh: access token: (\S+)", line)
            if found:
                self.printed_token = found.group(1)

    @property
    def headers(self) -> dict:
        token = self.token or self.printed_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Seconds from launch until /system_stats answered."""
        deadline = time.monotonic() + timeout
        with self.client() as http:
            while True:
                try:
                    if http.get("/system_stats").status_code == 200:
                        return time.monotonic() - self.started_at
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not answer:\n" + "\n".join(self.lines))
                time.sleep(0.02)

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_for_history(http: httpx.Client, prompt_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = http.get(f"/history/{prompt_id}").json()
        if prompt_id in entry:
            return entry[prompt_id]
        time.sleep(0.1)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")


def events_until_done(ws, prompt_id: str, timeout: float = 60.0) -> tuple[list[dict], list[bytes]]:
    """JSON events and binary (preview) frames from `ws` up to the `executing` event with node None
    that ends `prompt_id`. The deadline turns a lost end event into a failure instead of a hang."""
    events, frames = [], []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = ws.recv()
        if isinstance(message, bytes):
            frames.append(message)
            continue
        event = json.loads(message)
        events.append(event)
        data = event["data"]
        if event["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return events, frames
    raise AssertionError(f"no end of prompt {prompt_id}: {events}")
