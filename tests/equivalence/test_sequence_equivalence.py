"""Sequence parallel (image tokens split across CPU worker processes, attention exchanged through a
gloo group) gives one device's final latent: tiny Flux.1-dev, Z-Image and Qwen-Image (2 heads each),
2 workers (Ulysses: one head each) and 3 workers (uneven token rows; 2 heads < 3 workers: ring),
Ulysses and ring forced, cfg > 1, and the planner choosing it on its own."""

from __future__ import annotations

import pytest
import torch

from same import assert_same

from diffmesh.engine.engine import Engine
from diffmesh.models.handle import ModelHandle
from diffmesh.parallel.request import with_parallel_request
from diffmesh.sampling.job import SampleJob

CONTEXT_WIDTH = 64          # the tiny DiTs' text width (testmodels_dit, dit.testfiles)


@pytest.fixture(scope="module")
def models(tiny_model_files) -> dict[str, ModelHandle]:
    return {"flux": ModelHandle(tiny_model_files["flux"]["flux_dev"], "unet", "flux"),
            "zimage": ModelHandle(tiny_model_files["dit"]["zimage"], "unet", "zimage"),
            "qwenimage": ModelHandle(tiny_model_files["dit"]["qwenimage"], "unet", "qwenimage")}


def _conditioning(seed: int, rows: int, family: str) -> list:
    g = torch.Generator().manual_seed(seed)
    options = {"pooled_output": torch.randn(1, 32, generator=g), "guidance": 3.5} if family == "flux" else {}
    return [[torch.randn(1, rows, CONTEXT_WIDTH, generator=g), options]]


def _job(model: ModelHandle, cfg=1.0, sampler="euler", seed=42, steps=3, height=10, width=14) -> SampleJob:
    """An odd-sized latent (10x14 -> 5x7 = 35 tokens): every worker count splits it unevenly."""
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    latent = torch.zeros(1, 16, height, width)
    sigmas = ksampler_sigmas(model_sampling_for(model), "simple", sampler, steps, 1.0)
    return SampleJob(latent=latent, noise=prepare_noise(latent, seed, None), sigmas=sigmas, sampler_name=sampler,
                     cfg=cfg, positive=_conditioning(1, 12, model.family),
                     negative=_conditioning(2, 7, model.family), seed=seed)


@pytest.mark.parametrize("family", ["flux", "zimage", "qwenimage"])
@pytest.mark.parametrize("workers", [2, 3])
def test_sequence_parallel_matches_single_device(request, reference_engine, models, family, workers):
    executor = request.getfixturevalue("two_workers" if workers == 2 else "three_workers")
    job = _job(models[family], sampler="euler_ancestral")
    engine = Engine(executor, parallel="sequence")
    result = engine.sample(models[family], job)
    assert engine.last_plan.strategy == "sequence" and len(engine.last_plan.workers) == workers
    assert_same(result, reference_engine.sample(models[family], job))


@pytest.mark.parametrize("attention", ["ulysses", "ring"])
def test_forced_attention_kind_matches_single_device(three_workers, reference_engine, models, attention):
    """Ulysses on 3 workers with 2 heads gives one worker no head; ring on 3 passes blocks twice."""
    job = _job(models["qwenimage"], cfg=2.5, steps=2)
    engine = Engine(three_workers, parallel="sequence", sequence_attention=attention)
    result = engine.sample(models["qwenimage"], job)
    assert engine.last_plan.strategy == "sequence"
    assert_same(result, reference_engine.sample(models["qwenimage"], job))


def test_node_request_and_planner_choose_sequence(two_workers, reference_engine, models):
    """MultiGPU_WorkUnits' strategy 'sequence' overrides --parallel none; in auto a cfg-1 transformer
    job at 64x64 latent (1024 tokens) goes to sequence parallel, a UNet-sized small one does not."""
    flux = models["flux"]
    job = _job(flux, steps=2)
    engine = Engine(two_workers, parallel="none")
    result = engine.sample(with_parallel_request(flux, "sequence"), job)
    assert engine.last_plan.strategy == "sequence"
    assert_same(result, reference_engine.sample(flux, job))

    auto = Engine(two_workers, parallel="auto")
    big = _job(flux, steps=1, height=64, width=64)
    result = auto.sample(flux, big)
    assert auto.last_plan.strategy == "sequence"
    assert_same(result, reference_engine.sample(flux, big))
    auto.sample(flux, _job(flux, steps=1))             # 35 tokens: not worth splitting
    assert auto.last_plan.strategy == "single"


@pytest.mark.parametrize("family", ["flux", "zimage"])
def test_cfg_times_sequence_on_four_workers_matches_single_device(four_workers, reference_engine, models, family):
    """cfg 3 on 4 workers: cond on workers 0-1 and uncond on 2-3, each pair splitting the image tokens,
    partners exchanging predictions each step (the negative has another length than the positive)."""
    job = _job(models[family], cfg=3.0, sampler="dpmpp_2m", steps=3)
    engine = Engine(four_workers, parallel="sequence")
    result = engine.sample(models[family], job)
    assert engine.last_plan.strategy == "cfg_sequence" and engine.last_plan.workers == (0, 1, 2, 3)
    assert_same(result, reference_engine.sample(models[family], job))


def test_an_interrupt_of_one_member_stops_all_at_the_same_step(three_workers, reference_engine, models):
    """Interrupting worker 2 alone stops the whole group (they agree on it each step): nobody is left
    waiting in an exchange, and the next job on the same workers gives the single-device latent."""
    from diffmesh.errors import InterruptedError_

    flux = models["flux"]
    job = _job(flux, steps=4)
    engine = Engine(three_workers, parallel="sequence")
    seen: list[int] = []

    def interrupt_at_step_2(event: dict) -> None:
        seen.append(event["value"])
        if event["value"] == 2:
            three_workers.interrupt([2])
    with pytest.raises(InterruptedError_):
        engine.sample(flux, job, interrupt_at_step_2)
    assert max(seen) == 2
    assert not any(three_workers.busy(w) for w in range(3))
    assert_same(engine.sample(flux, job), reference_engine.sample(flux, job))


@pytest.fixture(scope="module")
def wan_models(tmp_path_factory) -> dict[str, ModelHandle]:
    """Tiny Wan 2.1 T2V (one head of 128: ring attention on 2 and 3 workers) and Wan 2.2 TI2V."""
    from diffmesh.models import testmodels_dit

    folder = tmp_path_factory.mktemp("wan-seq")
    testmodels_dit.write("wan21", "tiny", folder / "wan21.safetensors")
    testmodels_dit.write("wan21", "tiny-ti2v", folder / "wan22.safetensors")
    return {"wan21": ModelHandle(str(folder / "wan21.safetensors"), "unet", "wan21"),
            "wan22": ModelHandle(str(folder / "wan22.safetensors"), "unet", "wan22")}


def _wan_job(model: ModelHandle, cfg: float, channels: int, mask: bool) -> SampleJob:
    """3 latent frames of 6x10 (3 x 3 x 5 = 45 tokens: uneven on 2 and 3 workers); for Wan 2.2 a
    noise mask that keeps the first frame, so each frame gets its own timestep (per-frame modulation)."""
    from diffmesh.nodes.sampling import model_sampling_for
    from diffmesh.sampling.noise import prepare_noise
    from diffmesh.sampling.schedules import ksampler_sigmas

    g = torch.Generator().manual_seed(3)
    latent = torch.randn(1, channels, 3, 6, 10, generator=g) * 0.5
    noise_mask = None
    if mask:
        noise_mask = torch.ones(1, 1, 3, 6, 10)
        noise_mask[:, :, 0] = 0.0
    sigmas = ksampler_sigmas(model_sampling_for(model), "simple", "euler", 3, 1.0)
    cond = [[torch.randn(1, 9, CONTEXT_WIDTH, generator=g), {}]]
    uncond = [[torch.randn(1, 5, CONTEXT_WIDTH, generator=g), {}]]
    return SampleJob(latent=latent, noise=prepare_noise(latent, 11, None), sigmas=sigmas, sampler_name="euler",
                     cfg=cfg, positive=cond, negative=uncond, seed=11, noise_mask=noise_mask)


@pytest.mark.parametrize("family", ["wan21", "wan22"])
@pytest.mark.parametrize("workers", [2, 3])
def test_wan_video_tokens_split_over_workers_match_single_device(request, reference_engine, wan_models, family,
                                                                  workers):
    executor = request.getfixturevalue("two_workers" if workers == 2 else "three_workers")
    job = _wan_job(wan_models[family], cfg=1.0 if family == "wan22" else 4.0,
                   channels=48 if family == "wan22" else 16, mask=family == "wan22")
    engine = Engine(executor, parallel="sequence")
    result = engine.sample(wan_models[family], job)
    assert engine.last_plan.strategy == "sequence" and len(engine.last_plan.workers) == workers
    assert_same(result, reference_engine.sample(wan_models[family], job))
