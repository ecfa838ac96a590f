"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.multiproc import MultiProcessExecutor
from diffmesh.models.handle import ModelHandle


@pytest.fixture(scope="module")
def two_processes():
    """Two CPU worker processes with one torch thread each, for one test module."""
    executor = MultiProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(2)],
                                    start_timeout=120)
    executor.start()
    yield executor
    executor.shutdown(timeout=5)


@pytest.fixture(scope="module")
def unet(tiny_models) -> ModelHandle:
    """The tiny SD1 checkpoint's UNet."""
    return ModelHandle(tiny_models["sd1"], "unet", "sd1")
