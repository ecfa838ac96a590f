"""The guided denoiser (CFG, batching, several entries, areas, masks), the CFG-parallel hook and
the run_sample_job pipeline (spec §6.1, §6.2, §6.7)."""

from __future__ import annotations

import threading

import pytest
import torch

from diffmesh.sampling.guidance import Denoiser
from diffmesh.sampling.job import SampleJob
from diffmesh.sampling.model_sampling import ModelSampling
from diffmesh.sampling.noise import prepare_noise
from diffmesh.sampling.pipeline import run_sample_job
from diffmesh.sampling.schedules import ksampler_sigmas

from .toy import ToyModel, conditioning

SIGMA = torch.tensor([3.0, 3.0])


def x_input(batch=2):
    return prepare_noise(torch.zeros(batch, 4, 8, 8), 0) * 3.0


def denoise(model, positive, negative, cfg, x=None):
    x = x_input() if x is None else x
    return Denoiser(model, positive, negative, cfg, x.shape)(x, SIGMA[:1].expand(x.shape[0]))


def test_cfg_combines_cond_and_uncond_in_x0_space():
    model = ToyModel()
    pos, neg = conditioning(0.4), conditioning(-0.3)
    cond = denoise(model, pos, neg, 1.0)
    uncond = denoise(model, neg, pos, 1.0)
    assert torch.allclose(denoise(model, pos, neg, 7.5), uncond + (cond - uncond) * 7.5, atol=1e-5)


def test_cfg_one_skips_the_uncond_pass_and_cfg_batches_both_in_one_call():
    model = ToyModel()
    denoise(model, conditioning(0.4), conditioning(-0.3), 1.0)
    assert model.calls == [(2, 77)]
    model.calls.clear()
    denoise(model, conditioning(0.4), conditioning(-0.3), 5.0)
    assert model.calls == [(4, 77)]


def test_contexts_of_different_length_are_padded_to_lcm_up_to_ratio_four():
    model = ToyModel()
    denoise(model, conditioning(0.4, tokens=154), conditioning(-0.3, tokens=77), 5.0)
    assert model.calls == [(4, 154)]
    model.calls.clear()
    denoise(model, conditioning(0.4, tokens=385), conditioning(-0.3, tokens=77), 5.0)
    assert sorted(model.calls) == [(2, 77), (2, 385)]


def test_padding_by_repetition_does_not_change_the_prediction():
    model = ToyModel()
    a = denoise(model, conditioning(0.4, tokens=154), conditioning(-0.3, tokens=77), 5.0)
    b = denoise(model, conditioning(0.4, tokens=154), conditioning(-0.3, tokens=154), 5.0)
    assert torch.allclose(a, b, atol=1e-6)


def test_several_entries_are_averaged_by_strength():
    model = ToyModel()
    two = conditioning(0.2) + conditioning(0.6)
    assert torch.allclose(denoise(model, two, conditioning(0.0), 1.0),
                          denoise(model, conditioning(0.4), conditioning(0.0), 1.0), atol=1e-5)
    weighted = conditioning(0.2, strength=3.0) + conditioning(0.6, strength=1.0)
    assert torch.allclose(denoise(model, weighted, conditioning(0.0), 1.0),
                          denoise(model, conditioning(0.3), conditioning(0.0), 1.0), atol=1e-5)


def test_area_entry_only_affects_its_area():
    model = ToyModel()
    base = denoise(model, conditioning(0.0), conditioning(0.0), 1.0)
    with_area = denoise(model, conditioning(0.0) + conditioning(1.0, area=(4, 4, 0, 0), strength=1.0),
                        conditioning(0.0), 1.0)
    diff = (with_area - base).abs()
    assert diff[:, :, 4:, :].max() < 1e-6 and diff[:, :, :, 4:].max() < 1e-6
    # inside: plain average of the two entries' eps (context means 0 and 1) times sigma 3
    assert torch.allclose(diff[:, :, :3, :3], torch.full_like(diff[:, :, :3, :3], 1.5), atol=1e-4)


def test_mask_entry_weights_pixels():
    model = ToyModel()
    mask = torch.zeros(1, 8, 8)
    mask[:, :, :4] = 1.0
    base = denoise(model, conditioning(0.0), conditioning(0.0), 1.0)
    masked = denoise(model, conditioning(0.0) + conditioning(1.0, mask=mask), conditioning(0.0), 1.0)
    diff = (masked - base).abs()
    assert diff[..., 4:].max() < 1e-6 and torch.allclose(diff[..., :4], torch.full_like(diff[..., :4], 1.5), atol=1e-4)


def test_v_prediction_denoised_formula():
    ms = ModelSampling(prediction_type="v")
    x, v, s = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.tensor([2.0])
    assert torch.allclose(ms.calculate_denoised(s, v, x), x / 5 - v * 2 / 5 ** 0.5, atol=1e-6)


class InProcessExchange:
    """Two threads meet at every guidance evaluation and swap their halves (like all_gather)."""

    def __init__(self):
        self.barrier = threading.Barrier(2)
        self.slots = {}

    def for_part(self, part):
        def exchange(local):
            self.slots[part] = local.clone()
            self.barrier.wait()
            out = (self.slots["cond"], self.slots["uncond"])
            self.barrier.wait()
            return out
        return exchange


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "dpmpp_2m_sde", "uni_pc", "heun"])
def test_cfg_parallel_matches_single_device(name):
    model = ToyModel()
    lat = torch.zeros(2, 4, 8, 8)
    job = SampleJob(latent=lat, noise=prepare_noise(lat, 3), sampler_name=name, cfg=6.0, seed=3,
                    sigmas=ksampler_sigmas(model.model_sampling, "karras", name, 5),
                    positive=conditioning(0.3) + conditioning(0.1, tokens=154), negative=conditioning(-0.2))
    single = run_sample_job(model, job, None)
    ex, results = InProcessExchange(), {}

    def worker(part):
        sub = SampleJob(**{**job.__dict__, "cfg_part": part, "exchange": ex.for_part(part)})
        results[part] = run_sample_job(ToyModel(), sub, None)

    threads = [threading.Thread(target=worker, args=(p,)) for p in ("cond", "uncond")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert torch.equal(results["cond"], single) and torch.equal(results["uncond"], single)


def test_on_step_reports_progress_and_can_interrupt():
    model = ToyModel()
    lat = torch.zeros(1, 4, 8, 8)
    job = SampleJob(latent=lat, noise=prepare_noise(lat, 1), sampler_name="euler", cfg=2.0, seed=1,
                    sigmas=ksampler_sigmas(model.model_sampling, "normal", "euler", 4),
                    positive=conditioning(0.1), negative=conditioning(0.0))
    seen = []
    run_sample_job(model, job, lambda step, total, x0: seen.append((step, total, tuple(x0.shape))))
    assert seen == [(i, 4, (1, 4, 8, 8)) for i in range(1, 5)]

    class Stop(Exception):
        pass

    def stop(step, total, x0):
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        run_sample_job(model, job, stop)


def test_empty_sigmas_return_latent_unchanged():
    model = ToyModel()
    lat = torch.randn(1, 4, 8, 8)
    job = SampleJob(latent=lat, noise=torch.randn_like(lat), sigmas=torch.FloatTensor([]), sampler_name="euler",
                    cfg=7.0, positive=conditioning(0.1), negative=conditioning(0.0), seed=0)
    assert torch.equal(run_sample_job(model, job, None), lat)


def test_noise_mask_zero_keeps_the_input_latent():
    model = ToyModel()
    lat = torch.randn(2, 4, 8, 8)
    for name in ["euler", "ddim", "dpmpp_2m"]:
        job = SampleJob(latent=lat, noise=prepare_noise(lat, 2), sampler_name=name, cfg=3.0, seed=2,
                        sigmas=ksampler_sigmas(model.model_sampling, "normal", name, 5, denoise=0.6),
                        positive=conditioning(0.1), negative=conditioning(0.0), noise_mask=torch.zeros(1, 64, 64))
        assert torch.allclose(run_sample_job(model, job, None), lat, atol=1e-5)


@pytest.mark.parametrize("mask_batch", [1, 2, 3])
def test_noise_mask_batch_split_matches_single_device(mask_batch):
    model = ToyModel()
    lat = torch.randn(3, 4, 8, 8)
    mask = torch.zeros(mask_batch, 64, 64)
    for i in range(mask_batch):
        mask[i, 16 * i:, :32 + 8 * i] = 1.0
    job = SampleJob(latent=lat, noise=prepare_noise(lat, 2), sampler_name="ddim", cfg=3.0, seed=2,
                    sigmas=ksampler_sigmas(model.model_sampling, "normal", "ddim", 5, denoise=0.6),
                    positive=conditioning(0.1), negative=conditioning(0.0), noise_mask=mask)
    full = run_sample_job(model, job, None)
    parts = torch.cat([run_sample_job(model, job.sliced(0, 1), None), run_sample_job(model, job.sliced(1, 3), None)])
    assert torch.allclose(full, parts, atol=1e-6)


def test_non_empty_latent_is_scaled_and_max_denoise_uses_sqrt_one_plus_sigma_squared():
    model = ToyModel()
    ms = model.model_sampling
    noise, lat = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    x = ms.noise_scaling(ms.sigma_max, noise, lat, ms.is_max_denoise(ms.sigma_max.view(1)))
    assert torch.allclose(x, noise * (1 + ms.sigma_max ** 2) ** 0.5 + lat)
    assert not ms.is_max_denoise(torch.tensor([1.5]))
