"""Fixtures for the end-to-end server tests: real `diffmesh serve` subprocesses on loopback, with
the real runtime, the tiny test models and the test custom nodes (`testnodes.py`) installed."""

from __future__ import annotations

import pytest
import testnodes
from serverproc import ServerProcess


@pytest.fixture
def start_server(models_base):
    """`start_server(base, *flags, **kwargs)`: a `ServerProcess` (not started) on `base`, whose
    `custom_nodes/` holds the `Sleep`/`Fail` test nodes and whose models are the tiny ones."""
    def start(base, *args: str, **kwargs) -> ServerProcess:
        testnodes.install(base)
        return ServerProcess(base, "--models-dir", str(models_base / "models"), *args, **kwargs)
    return start


@pytest.fixture
def node_server(tmp_path, start_server):
    """A started server for the protocol tests (prompts of `Sleep` and `Fail` nodes)."""
    with start_server(tmp_path / "base", "--preview-method", "none") as server:
        server.wait_ready()
        yield server
