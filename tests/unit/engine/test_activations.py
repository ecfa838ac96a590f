"""The measured activation table (models/data/activations.json, written by bench/activations.py) and
its promise: a prediction from the table is at least the peak a sampler step really allocates, and
not absurdly more."""

from __future__ import annotations

import pytest
import torch

from diffmesh.engine import activation_probe, activations, costmodel

FAMILIES = ("sd1", "sd2", "sd2v", "sdxl", "flux", "zimage", "qwenimage", "wan21", "wan22")


def test_table_says_where_it_was_measured():
    table = activations.load_table()
    assert table["torch"] and table["date"] and table["machine"]["cpus"] >= 1
    for fit in table["families"].values():
        assert all(fit[k] >= 0 for k in "abcd") and fit["margin"] >= 1.0
        assert fit["predicted_over_measured"]["min"] >= 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_answers_and_grows_with_size_rows_and_width(family):
    width = 320 if family in activation_probe.UNETS else 3072
    one = activations.activation_bytes(family, width, 4096, 1)
    assert one is not None and one > 0
    assert activations.activation_bytes(family, width, 4 * 4096, 1) > one
    assert activations.activation_bytes(family, width, 4096, 2) > one
    assert activations.activation_bytes(family, 2 * width, 4096, 1) > one
    assert activations.activation_bytes(family, width, 4096, 1, bytes_per=2) == pytest.approx(one / 2, abs=1)


def test_unmeasured_family_falls_back_to_the_factor_estimate():
    assert activations.activation_bytes("nosuch", 64, 256, 1) is None
    facts = costmodel.ModelFacts("dit", 1000, (100,) * 4, 1e9, hidden_bytes=1000, family="nosuch",
                                 tokens=64, width=4, rows=1)
    assert facts.activation_bytes == 1000 * costmodel.ACTIVATION_FACTOR["dit"]
    measured = costmodel.ModelFacts("dit", 1000, (100,) * 4, 1e9, hidden_bytes=1000, family="flux",
                                    tokens=4096, width=3072, rows=2, bytes_per=2)
    assert measured.activation_bytes == activations.activation_bytes("flux", 3072, 4096, 2, 2)
    assert measured.activation_bytes != 1000 * costmodel.ACTIVATION_FACTOR["dit"]


def test_measure_peak_counts_what_fn_allocates_and_not_what_was_there():
    before = torch.ones(4 << 20)                                   # 16 MiB held already: not counted

    def fn():
        a = torch.ones(1 << 20)                                    # 4 MiB
        b = a * 2                                                  # + 4 MiB: peak 8 MiB
        del a, b
        return torch.ones(1 << 18)                                 # 1 MiB after the peak

    peak = activations.measure_peak(fn)
    assert 8 << 20 <= peak < (8 << 20) + (256 << 10)
    assert before.numel() == 4 << 20


@pytest.fixture(scope="module")
def tiny_sd1(tiny_models):
    from diffmesh.models.handle import ModelHandle
    from diffmesh.models.load import build_component

    handle = ModelHandle(tiny_models["sd1"], "unet", "sd1")
    model = build_component(handle, "cpu", "fp32")
    activation_probe.step_peak(model, handle, 8, 1, 2)             # warm-up, as the bench does
    return handle, model


@pytest.mark.parametrize("side,rows", [(24, 1), (40, 2)])
def test_prediction_covers_the_measured_peak_of_a_tiny_unet(tiny_sd1, side, rows):
    """Sizes between the bench's (16, 32, 48, 64): the fitted curve, not a recorded point."""
    handle, model = tiny_sd1
    measured = activation_probe.step_peak(model, handle, side, 1, rows)
    width = 32                                                     # tiny SD1 model_channels
    predicted = activations.activation_bytes("sd1", width, activation_probe.tokens("sd1", side), rows)
    assert measured <= predicted < 4 * measured, (measured, predicted)
