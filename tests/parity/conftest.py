"""Parity tests load full-size and full-width models (up to 3.6 GB each) in module-scoped fixtures.
When a module ends its models are freed, but glibc keeps the freed heap pages mapped, so the pytest
process's RSS would grow by each module's peak. After every module: collect, then hand the free heap
back to the OS (`malloc_trim`), so later tests in the same run have the memory."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

import pytest


def _trim_heap() -> None:
    gc.collect()
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):   # glibc only; elsewhere the allocator decides
        libc.malloc_trim(0)


@pytest.fixture(scope="module", autouse=True)
def _release_module_memory():
    yield
    _trim_heap()
