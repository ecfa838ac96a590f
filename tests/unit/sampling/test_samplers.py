"""Every implemented sampler runs, converges, is deterministic where it should be, and gives the
same numbers when its batch is split across workers (spec §6.5-6.6, DESIGN rule 3)."""

from __future__ import annotations

import pytest
import torch

from diffmesh.sampling.job import SampleJob
from diffmesh.sampling.noise import prepare_noise
from diffmesh.sampling.pipeline import run_sample_job
from diffmesh.sampling.samplers import IMPLEMENTED_SAMPLERS, SAMPLER_NAMES, SAMPLERS, get_sampler
from diffmesh.sampling.schedules import ksampler_sigmas

from .toy import ToyModel, conditioning

STOCHASTIC = {name for name, spec in SAMPLERS.items() if spec.noise != "none"}
DETERMINISTIC = [n for n in IMPLEMENTED_SAMPLERS if n not in STOCHASTIC]


def make_job(model, name, batch=3, steps=5, seed=7, cfg=4.0, scheduler="karras", latent=None, **kw):
    lat = torch.zeros(batch, 4, 8, 8) if latent is None else latent
    return SampleJob(latent=lat, noise=prepare_noise(lat, seed), sampler_name=name, cfg=cfg, seed=seed,
                     sigmas=ksampler_sigmas(model.model_sampling, scheduler, name, steps),
                     positive=conditioning(0.1), negative=conditioning(-0.2), **kw)


class OracleModel(ToyModel):
    """Predicts the exact eps for a point-mass data distribution at `target` (scaled space);
    exact when sigma is a table entry (the "simple" schedule)."""

    def __init__(self, target):
        super().__init__()
        self.target = target

    def __call__(self, x, timestep, context, **extra):
        sigma = self.model_sampling.sigmas[timestep.long()].view(-1, 1, 1, 1)
        x_full = x * (sigma ** 2 + 1) ** 0.5
        return (x_full - self.target) / sigma


def test_sampler_names_are_comfyuis_44_in_order_and_all_implemented():
    assert len(SAMPLER_NAMES) == 44
    assert SAMPLER_NAMES[:3] == ["euler", "euler_cfg_pp", "euler_ancestral"]
    assert SAMPLER_NAMES[-3:] == ["ddim", "uni_pc", "uni_pc_bh2"]
    assert IMPLEMENTED_SAMPLERS == SAMPLER_NAMES


def test_node_sampler_list_is_the_sampler_table():
    from diffmesh.nodes.sampling import SAMPLER_NAMES as NODE_NAMES

    assert list(NODE_NAMES) == SAMPLER_NAMES


def test_unknown_sampler_error_names_it_and_lists_implemented():
    with pytest.raises(ValueError) as err:
        get_sampler("no_such_sampler")
    assert "no_such_sampler" in str(err.value) and "unknown" in str(err.value)
    assert "euler_ancestral" in str(err.value) and "sa_solver_pece" in str(err.value)


def test_euler_one_step_equals_hand_computation():
    model = ToyModel()
    lat = torch.zeros(1, 4, 8, 8)
    noise = prepare_noise(lat, 1)
    job = SampleJob(latent=lat, noise=noise, sigmas=torch.tensor([2.0, 0.0]), sampler_name="euler", cfg=1.0,
                    positive=conditioning(0.5), negative=conditioning(0.0), seed=1)
    out = run_sample_job(model, job, None)
    x = noise * 2.0                                         # sigma 2 < sigma_max: x = noise * sigma
    t = float(model.model_sampling.timestep(torch.tensor(2.0)))
    eps = 0.3 * (x / 5 ** 0.5) + t / 2000.0 + 0.5
    denoised = x - eps * 2.0
    x1 = x + (x - denoised) / 2.0 * (0.0 - 2.0)
    assert torch.allclose(out, x1 / 0.18215, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", IMPLEMENTED_SAMPLERS)
def test_sampler_converges_to_the_data_point_with_an_oracle_denoiser(name):
    target = torch.linspace(-1, 1, 4 * 8 * 8).view(1, 4, 8, 8)    # broadcast over any batch
    model = OracleModel(target)
    job = make_job(model, name, batch=2, steps=8, scheduler="simple", cfg=3.0)
    out = run_sample_job(model, job, None)
    assert out.shape[0] == 2
    atol = 1e-2 if name.startswith("uni_pc") else 2e-3    # UniPC stops at sigma 0.001, not 0
    want = target.expand_as(out)
    if name in ("dpm_fast", "dpm_adaptive"):
        # they stop at the last non-zero sigma without a final denoise (as ComfyUI): on the exact
        # ODE path x(sigma) = target + (x_T - target) * sigma / sigma_T, x_T = noise * sqrt(1 + sigma_T^2)
        sigma_t, sigma_end = job.sigmas[0], job.sigmas[-2]
        x_t = job.noise * (1 + sigma_t ** 2) ** 0.5
        want = target + (x_t - target) * sigma_end / sigma_t
        atol = 1e-2         # their inner sigmas are off the table, where the oracle rounds the timestep
    assert torch.allclose(out * 0.18215, want, atol=atol), (out * 0.18215 - want).abs().max()


@pytest.mark.parametrize("name", [n for n in IMPLEMENTED_SAMPLERS if not SAMPLERS[n].batch_coupled])
def test_batch_split_matches_single_device(name):
    model = ToyModel()
    job = make_job(model, name)
    full = run_sample_job(model, job, None)
    parts = torch.cat([run_sample_job(model, job.sliced(0, 1), None), run_sample_job(model, job.sliced(1, 3), None)])
    assert torch.isfinite(full).all()
    assert torch.allclose(full, parts, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_sampler_ignores_the_step_seed(name):
    model = ToyModel()
    job = make_job(model, name, batch=1)
    a = run_sample_job(model, job, None)
    job.seed = 123                                              # same initial noise, other step seed
    assert torch.equal(a, run_sample_job(model, job, None))


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_sampler_is_reproducible_and_depends_on_seed(name):
    model = ToyModel()
    job = make_job(model, name, batch=1)
    a = run_sample_job(model, job, None)
    assert torch.equal(a, run_sample_job(model, job, None))
    job.seed = 123
    assert not torch.allclose(a, run_sample_job(model, job, None))


def test_only_dpm_adaptive_couples_the_rows_of_a_batch():
    model = ToyModel()
    assert [n for n in IMPLEMENTED_SAMPLERS if SAMPLERS[n].batch_coupled] == ["dpm_adaptive"]
    job = make_job(model, "dpm_adaptive")
    full = run_sample_job(model, job, None)
    parts = torch.cat([run_sample_job(model, job.sliced(0, 1), None), run_sample_job(model, job.sliced(1, 3), None)])
    assert not torch.allclose(full, parts, rtol=1e-6, atol=1e-6)


def test_gpu_names_equal_cpu_names():
    model = ToyModel()
    for name in ["dpmpp_sde", "dpmpp_2m_sde", "dpmpp_2m_sde_heun", "dpmpp_3m_sde"]:
        a = run_sample_job(model, make_job(model, name, batch=1), None)
        b = run_sample_job(model, make_job(model, name + "_gpu", batch=1), None)
        assert torch.equal(a, b)


def test_ddim_equals_euler_without_mask():
    model = ToyModel()
    assert torch.equal(run_sample_job(model, make_job(model, "ddim"), None),
                       run_sample_job(model, make_job(model, "euler"), None))


def test_uni_pc_uses_one_model_call_per_step():
    model = ToyModel()
    calls = model.calls
    run_sample_job(model, make_job(model, "uni_pc", batch=1, steps=6, cfg=1.0), None)
    assert len(calls) == 6


def test_flow_model_pipeline_scales_noise_and_unscales_a_partial_schedule():
    """Flow models start from sigma*noise + (1 - sigma)*latent and, like ComfyUI's CONST sampling,
    divide a result stopped at sigma_end > 0 by 1 - sigma_end."""
    from diffmesh.sampling.guidance import Denoiser
    from diffmesh.sampling.model_sampling import FlowModelSampling
    from diffmesh.sampling.samplers_k import sample_euler

    model = ToyModel()
    model.model_sampling = FlowModelSampling("shift", 3.0)
    lat = torch.full((1, 4, 8, 8), 0.5)
    noise = prepare_noise(lat, 3)
    sigmas = torch.tensor([0.9, 0.6, 0.3])
    job = SampleJob(latent=lat, noise=noise, sigmas=sigmas, sampler_name="euler", cfg=1.0, seed=3,
                    positive=conditioning(0.1), negative=conditioning(0.0))
    out = run_sample_job(model, job, None)
    latent_in = lat * 0.18215
    x = 0.9 * noise + 0.1 * latent_in
    denoiser = Denoiser(model, job.positive, job.negative, 1.0, tuple(lat.shape), latent_image=latent_in, noise=noise)
    want = sample_euler(denoiser, x, sigmas) / (1 - 0.3) / 0.18215
    assert torch.allclose(out, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, want * 0.7, rtol=1e-3, atol=1e-3)
