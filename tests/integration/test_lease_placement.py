"""A prompt's model work runs only on the workers its lease holds: an explicit device (a loader's
`device` input, a Select*Device node) naming a worker another prompt holds falls back to the
prompt's own workers with a warning, instead of running on the other prompt's worker."""

from __future__ import annotations

import logging

import pytest

from diffmesh.engine.engine import Engine
from diffmesh.executors.base import WorkerSpec
from diffmesh.executors.inproc import InProcessExecutor
from diffmesh.models.handle import ModelHandle


@pytest.fixture
def engine():
    executor = InProcessExecutor([WorkerSpec(worker_id=i, device="cpu", threads=1) for i in range(2)])
    executor.start()
    yield Engine(executor, parallel="auto")
    executor.shutdown()


def _loaded(engine: Engine, worker_id: int) -> list[str]:
    return [c["component"] for c in engine.executor.worker(worker_id).memory.stats()["components"]]


def test_a_device_request_for_another_prompts_worker_runs_on_the_prompts_own_worker(engine, tiny_models, caplog):
    first = engine.acquire(pending=2, timeout=0)            # two prompts pending: one worker each
    second = engine.acquire(pending=2, timeout=0)
    mine, theirs = first.worker_ids[0], second.worker_ids[0]
    clip = ModelHandle(tiny_models["sd1"], "clip", "sd1", device=engine.infos[theirs].label)
    with caplog.at_level(logging.WARNING, logger="diffmesh.engine"):
        cond = first.engine.encode_text(clip, "a cat")
    assert len(cond) == 1
    assert _loaded(engine, mine) == ["clip"] and _loaded(engine, theirs) == []
    assert first.engine.worker_for(clip) == mine
    assert any(engine.infos[theirs].label in r.getMessage() and "another prompt" in r.getMessage()
               for r in caplog.records)
    first.release()
    second.release()


def test_a_prompt_holding_every_worker_still_gets_the_device_it_asks_for(engine, tiny_models):
    lease = engine.acquire(pending=1, timeout=0)            # a lone prompt: every worker
    assert sorted(lease.worker_ids) == [0, 1]
    for worker in (0, 1):
        clip = ModelHandle(tiny_models["sd1"], "clip", "sd1", device=engine.infos[worker].label)
        assert lease.engine.worker_for(clip) == worker
    lease.release()
