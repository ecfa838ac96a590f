"""Activations count against the budget: the facts `--explain` builds for a job (file header + latent
+ cfg, `engine.explain.job_facts`) predict activation bytes from the measured table that cover what
one real sampler step of that job allocates (tiny Flux with cfg batched, tiny Wan 2.1 with frames)."""

from __future__ import annotations

import pytest
import torch

from diffmesh.engine import activation_probe, explain
from diffmesh.engine.activations import measure_peak
from diffmesh.models.handle import ModelHandle
from diffmesh.models.load import build_component
from diffmesh.nodes.sampling import model_sampling_for
from diffmesh.sampling.job import SampleJob
from diffmesh.sampling.noise import prepare_noise
from diffmesh.sampling.pipeline import run_sample_job
from diffmesh.sampling.schedules import ksampler_sigmas


def _job(handle: ModelHandle, latent: torch.Tensor, cfg: float) -> SampleJob:
    cond = activation_probe.conditioning(handle.family, handle.path)
    return SampleJob(latent=latent, noise=prepare_noise(latent, 3, None),
                     sigmas=ksampler_sigmas(model_sampling_for(handle), "simple", "euler", 1, 1.0),
                     sampler_name="euler", cfg=cfg, positive=cond, negative=cond, seed=3)


@pytest.fixture(scope="module")
def wan21_tiny(tmp_path_factory) -> str:
    from diffmesh.models import testmodels_dit

    return testmodels_dit.write("wan21", "tiny", tmp_path_factory.mktemp("wan") / "wan21-tiny.safetensors")


@pytest.mark.parametrize("family,shape,cfg,tokens,rows,width", [
    ("flux", (1, 16, 24, 24), 2.0, 144, 2, 256),
    ("wan21", (1, 16, 3, 20, 20), 1.0, 300, 1, 128),
])
def test_explain_facts_cover_the_peak_of_a_real_step(tiny_model_files, wan21_tiny, family, shape, cfg, tokens,
                                                      rows, width):
    path = tiny_model_files["flux"]["flux_dev"] if family == "flux" else wan21_tiny
    handle = ModelHandle(path, "unet", family)
    model = build_component(handle, "cpu", "fp32")
    job = _job(handle, torch.zeros(shape), cfg)
    with torch.no_grad():
        run_sample_job(model, _job(handle, torch.zeros(shape[:-2] + (8, 8)), cfg))     # warm-up
        measured = measure_peak(lambda: run_sample_job(model, job))
    facts = explain.job_facts(handle, job, 4)
    assert (facts.family, facts.tokens, facts.rows, facts.width) == (family, tokens, rows, width)
    assert measured <= facts.activation_bytes < 4 * measured, (measured, facts.activation_bytes)
