"""Fixtures for the end-to-end server tests: real `diffmesh serve` subprocesses on loopback."""

from __future__ import annotations

import pytest
from serverproc import ServerProcess


@pytest.fixture
def fake_server(tmp_path):
    """A server whose runtime runs `Sleep`/`Fail` test nodes (protocol tests, no models)."""
    with ServerProcess(tmp_path / "base", "--preview-method", "none", fake_runtime=True) as server:
        server.wait_ready()
        yield server
