"""Schedules, KSampler step adjustments and initial noise match ComfyUI's numbers (spec §6.1-6.4)."""

from __future__ import annotations

import pickle

import pytest
import torch

from diffmesh.sampling.latent_formats import for_family, latent_to_rgb_preview
from diffmesh.sampling.model_sampling import ModelSampling
from diffmesh.sampling.noise import CPUNoiseSampler, brownian_for_sigmas, prepare_noise
from diffmesh.sampling.schedules import (SCHEDULER_NAMES, advanced_sigmas, beta_ppf, calculate_sigmas,
                                         ksampler_sigmas)

# spec §6.3, SD1.5, 20 steps
REFERENCE_20 = {
    "normal": "14.6146 10.7468 8.08152 6.20493 4.85565 3.86538 3.12376 2.55717 2.11566 1.76482 1.48058 1.24581 1.04814 0.878428 0.729719 0.596434 0.473585 0.355545 0.232164 0.0291672 0",
    "karras": "14.6146 11.7254 9.3402 7.38362 5.78941 4.49983 3.46475 2.64084 1.99091 1.48321 1.09079 0.790946 0.564722 0.39639 0.273038 0.184168 0.121341 0.07786 0.0484813 0.0291672 0",
    "exponential": "14.6146 10.5363 7.59607 5.47632 3.94811 2.84636 2.05206 1.47942 1.06657 0.768937 0.554359 0.399661 0.288132 0.207727 0.149759 0.107967 0.0778383 0.0561169 0.040457 0.0291672 0",
    "simple": "14.6146 10.9042 8.3028 6.44296 5.08776 4.08173 3.32108 2.73547 2.27646 1.91025 1.61289 1.36717 1.16058 0.983817 0.82986 0.693205 0.569285 0.453819 0.341674 0.223003 0",
    "sgm_uniform": "14.6146 10.9073 8.30717 6.44769 5.09241 4.08608 3.32507 2.73908 2.27973 1.91321 1.61558 1.36964 1.16286 0.985955 0.831884 0.69515 0.571189 0.455736 0.343705 0.225452 0",
    "ddim_uniform": "11.0283 8.39069 6.5064 5.13443 4.1167 3.34776 2.7562 2.29285 1.92344 1.62369 1.37618 1.16822 0.990409 0.835653 0.698398 0.57405 0.458333 0.346187 0.228147 0.0413144 0",
    "beta": "14.6146 13.5157 11.5428 9.38892 7.37184 5.68659 4.3728 3.37472 2.61524 2.04731 1.61828 1.28462 1.02733 0.821221 0.654885 0.515391 0.39551 0.291284 0.199059 0.111419 0",
}


@pytest.fixture(scope="module")
def ms():
    return ModelSampling()


def test_sigma_table_matches_the_sd15_discrete_schedule(ms):
    assert ms.sigmas.dtype == torch.float32 and len(ms.sigmas) == 1000
    assert float(ms.sigma_min) == pytest.approx(0.0291672, rel=1e-5)
    assert float(ms.sigma_max) == pytest.approx(14.6146, rel=1e-5)
    assert float(ms.sigmas[1]) == pytest.approx(0.0413144, rel=1e-5)


def test_model_sampling_is_small_and_picklable(ms):
    copy = pickle.loads(pickle.dumps(ModelSampling(prediction_type="v")))
    assert copy.prediction_type == "v" and torch.equal(copy.sigmas, ms.sigmas)
    assert len(pickle.dumps(ms)) < 500


def test_timestep_is_nearest_integer_and_sigma_inverts_it(ms):
    ts = ms.timestep(calculate_sigmas(ms, "normal", 20)[:-1])
    expected = [999, 946, 894, 841, 789, 736, 684, 631, 578, 526, 473, 421, 368, 315, 263, 210, 158, 105, 53, 0]
    assert ts.tolist() == expected
    assert float(ms.sigma(torch.tensor(999.0))) == pytest.approx(float(ms.sigma_max), rel=1e-6)
    assert ms.percent_to_sigma(0.0) == 999999999.9 and ms.percent_to_sigma(1.0) == 0.0


@pytest.mark.parametrize("name", sorted(REFERENCE_20))
def test_scheduler_matches_reference_table(ms, name):
    expected = torch.tensor([float(v) for v in REFERENCE_20[name].split()])
    got = calculate_sigmas(ms, name, 20)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_scheduler_names_in_comfyui_order_and_all_end_in_zero(ms):
    assert SCHEDULER_NAMES == ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta",
                               "normal", "linear_quadratic", "kl_optimal"]
    for name in SCHEDULER_NAMES:
        s = calculate_sigmas(ms, name, 10)
        assert s[-1] == 0 and s.dtype == torch.float32 and bool((s[:-1] > 0).all())


def test_kl_optimal_and_linear_quadratic_follow_their_formulas(ms):
    n = 10
    kl = calculate_sigmas(ms, "kl_optimal", n)
    k = torch.arange(n, dtype=torch.float64) / (n - 1)
    amin, amax = torch.atan(ms.sigma_min.double()), torch.atan(ms.sigma_max.double())
    assert torch.allclose(kl[:-1].double(), torch.tan(k * amin + (1 - k) * amax), rtol=1e-5)
    lq = calculate_sigmas(ms, "linear_quadratic", n)
    assert lq[0] == pytest.approx(float(ms.sigma_max)) and len(lq) == n + 1


def test_beta_ppf_matches_scipy():
    from scipy import stats  # a dev dependency: the reference implementation of the Beta quantile
    for u in [0.001, 0.05, 0.3, 0.5, 0.77, 0.999]:
        assert beta_ppf(u, 0.6, 0.6) == pytest.approx(stats.beta.ppf(u, 0.6, 0.6), abs=1e-12)


def test_normal_4_steps_equal_reference_sigmas_bit_exact(ms, reference_dir):
    from safetensors.torch import load_file

    ref = load_file(str(reference_dir / "sd15_256_euler" / "components.safetensors"))
    assert torch.equal(ksampler_sigmas(ms, "normal", "euler", 4, 1.0), ref["sigmas"])


def test_prepare_noise_is_bit_exact_with_reference(reference_dir):
    from safetensors.torch import load_file

    ref = load_file(str(reference_dir / "sd15_256_euler" / "components.safetensors"))
    assert torch.equal(prepare_noise(torch.zeros(1, 4, 32, 32), 42), ref["noise"])


def test_prepare_noise_leaves_global_rng_alone_and_accepts_64bit_seeds():
    state = torch.random.get_rng_state()
    prepare_noise(torch.zeros(1, 4, 4, 4), 2 ** 64 - 1)
    assert torch.equal(state, torch.random.get_rng_state())


def test_prepare_noise_batch_index_reuses_the_draw_of_each_index():
    lat = torch.zeros(4, 4, 8, 8)
    full = prepare_noise(lat, 3)
    picked = prepare_noise(lat[:3], 3, batch_index=[2, 0, 2])
    assert torch.equal(picked[0], full[2]) and torch.equal(picked[1], full[0]) and torch.equal(picked[2], full[2])


def test_denoise_half_keeps_tail_of_double_length_schedule(ms):
    sig = ksampler_sigmas(ms, "normal", "euler", 20, 0.5)
    assert len(sig) == 21
    assert float(sig[0]) == pytest.approx(1.54816, rel=1e-5)
    assert torch.equal(sig, calculate_sigmas(ms, "normal", 40)[-21:])
    assert ksampler_sigmas(ms, "normal", "euler", 20, 0.0).numel() == 0


def test_second_order_samplers_discard_penultimate_sigma(ms):
    sig = ksampler_sigmas(ms, "karras", "dpm_2", 10)
    full = calculate_sigmas(ms, "karras", 11)
    assert torch.equal(sig, torch.cat([full[:-2], full[-1:]]))


def test_unknown_names_fall_back_to_first_entries_like_comfyui(ms):
    assert torch.equal(ksampler_sigmas(ms, "nope", "nope", 5), calculate_sigmas(ms, "simple", 5))


def test_advanced_start_end_and_leftover_noise(ms):
    full = ksampler_sigmas(ms, "normal", "euler", 20)
    window = advanced_sigmas(ms, "normal", "euler", 20, 5, 12, force_full_denoise=False)
    assert torch.equal(window, full[5:13])
    forced = advanced_sigmas(ms, "normal", "euler", 20, 5, 12, force_full_denoise=True)
    assert forced[-1] == 0 and torch.equal(forced[:-1], full[5:12])
    assert advanced_sigmas(ms, "normal", "euler", 20, 20, 10000, True).numel() == 0   # latent unchanged
    assert torch.equal(advanced_sigmas(ms, "normal", "euler", 20, 0, 10000, True), full)
    assert torch.equal(full, ksampler_sigmas(ms, "normal", "euler", 20))                # not mutated


def test_ancestral_noise_uses_cpu_seed_plus_one_and_slices_full_batch():
    x = torch.zeros(3, 4, 4, 4)
    full = CPUNoiseSampler(x, 10)()
    g = torch.Generator().manual_seed(11)
    assert torch.equal(full, torch.randn(3, 4, 4, 4, generator=g))
    part = CPUNoiseSampler(x[1:], 10, batch_slice=(1, 3, 3))()
    assert torch.equal(part, full[1:])


def test_brownian_noise_of_a_slice_equals_the_rows_of_the_full_batch():
    x = torch.zeros(3, 2, 4, 4)
    sig = torch.tensor([10.0, 3.0, 1.0, 0.0])
    full = brownian_for_sigmas(x, sig, 5)(sig[0], sig[1])
    part = brownian_for_sigmas(x[:1], sig, 5, batch_slice=(0, 1, 3))(sig[0], sig[1])
    assert torch.equal(part, full[:1])
    assert abs(float(full.std()) - 1.0) < 0.3


def test_latent_formats_and_preview():
    assert for_family("sd1").scale_factor == 0.18215 and for_family("sdxl").scale_factor == 0.13025
    assert for_family("sdxl").bias is not None
    with pytest.raises(ValueError, match="sd3"):
        for_family("sd3")
    img = latent_to_rgb_preview(torch.zeros(2, 4, 6, 5), for_family("sd1"))
    assert img.size == (5, 6) and img.getpixel((0, 0)) == (127, 127, 127)
