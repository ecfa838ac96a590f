"""`diffmesh bench --scenarios costmodel`: the cost model's predictions beside measured step times.

One run of the command on the tiny SD1 checkpoint with 2 one-thread CPU workers (128 px: 16 latent
rows, two patch bands; cfg 7, so CFG parallel applies). Checked: the JSON's structure, a measured
step time and a prediction for every strategy that applies to this model (resident, cfg, patch,
shard, layersplit), the measured link figures the predictions used, and the planner's choice.
No timing thresholds: the figures are reported, not judged (a shared machine's times vary)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from diffmesh.benchmarks import link
from diffmesh.benchmarks.costmodel import applicable
from diffmesh.engine import costmodel
from diffmesh.cli import main

STRATEGIES = {"resident", "cfg", "patch", "shard", "layersplit"}


@pytest.fixture(scope="module")
def report(tiny_models, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "costmodel.json"
    code = main(["bench", "--cpu", "--workers", "2", "--scenarios", "costmodel", "--checkpoint", tiny_models["sd1"],
                 "--family", "sd1", "--size", "128", "--steps", "2", "--cfg", "7", "--out", str(out)])
    assert code == 0
    return json.loads(out.read_text())


def test_every_applicable_strategy_has_a_measurement_and_a_prediction(report):
    result = report["results"]["costmodel"]
    assert set(result["strategies"]) == STRATEGIES
    for name, row in result["strategies"].items():
        assert row["runs"] and all(r["strategy"] == name for r in row["runs"]), (name, row["note"])
        assert row["measured_s"] > 0 and row["predicted_s"] > 0, name
        assert row["ratio_measured_to_predicted"] == pytest.approx(row["measured_s"] / row["predicted_s"], rel=1e-2)
        assert len(row["runs"][0]["workers"]) == (1 if name == "resident" else 2), name
    assert report["summary"]["costmodel"]["per_strategy"].keys() == result["strategies"].keys()


def test_predictions_use_the_measured_inputs(report):
    result = report["results"]["costmodel"]
    inputs = result["inputs"]
    facts = inputs["device_facts"]
    assert facts["step_s"] == inputs["compute_step_s"] > 0                 # the measured compute term
    assert facts["peer_bw"] == inputs["link"]["peer_bw_bytes_per_s"] > 0  # not the documented gloo figure
    assert facts["latency"] == inputs["link"]["latency_s"] > 0
    assert len(inputs["link_probes"]) == 2                                 # before and after the runs
    assert all(set(p["median_s_by_size"]) == {str(s) for s in link.SIZES} for p in inputs["link_probes"])
    assert 0 < inputs["fixed_step_s"] <= inputs["compute_step_s"]         # the part a split does not divide
    assert facts["fixed_s"] == inputs["fixed_step_s"]
    # resident is the compute term itself: its prediction is the calibration run's step time
    assert result["strategies"]["resident"]["predicted_s"] == pytest.approx(inputs["compute_step_s"], rel=1e-3)
    assert "patch" in result["explain_measured"] and "<" in result["explain_measured"]


def test_the_planner_choice_and_the_fastest_are_reported(report):
    result = report["results"]["costmodel"]
    planner = result["planner"]
    assert planner["strategy"] in STRATEGIES and planner["reason"]
    assert "--parallel auto" in planner["explain"]                        # the --explain table it printed
    assert result["cost_model_choice"] in STRATEGIES
    measured = {k: v["measured_s"] for k, v in result["strategies"].items()}
    assert result["measured_fastest"] == min(measured, key=measured.get)
    cpu = {k: v["measured_cpu_s"] for k, v in result["strategies"].items() if v["measured_cpu_s"] is not None}
    assert result["measured_fastest_cpu"] == min(cpu, key=cpu.get)
    summary = report["summary"]["costmodel"]
    assert summary["planner"] == planner["strategy"] and summary["measured_fastest"] == result["measured_fastest"]


def test_applicable_strategies_follow_model_kind_cfg_and_workers():
    assert applicable("unet", "sd1", 1.0, 2) == ["resident", "patch", "shard", "layersplit"]
    assert applicable("dit", "flux", 1.0, 2) == ["resident", "sequence", "shard", "layersplit"]
    assert applicable("dit", "flux", 3.5, 4) == ["resident", "cfg", "cfg_sequence", "shard", "layersplit"]
    assert applicable("unet", "sd1", 7.0, 1) == ["resident"]


def test_link_fit_recovers_latency_and_bandwidth():
    latency, bw = 1e-3, 500e6                                  # 2 members: each receives the other's m bytes
    samples = {str(s): [latency + s / bw] * 3 for s in link.SIZES}
    figures = link.fit(samples, 2)
    assert figures["latency"] == pytest.approx(latency + link.SIZES[0] / bw)
    assert figures["peer_bw"] == pytest.approx(bw, rel=1e-6)


def test_link_probes_combine_by_mean_latency_and_time_per_byte():
    figures = link.combine([{"latency_s": 1e-3, "peer_bw_bytes_per_s": 100e6},
                            {"latency_s": 3e-3, "peer_bw_bytes_per_s": 300e6}])
    assert figures["latency_s"] == pytest.approx(2e-3)
    assert figures["peer_bw_bytes_per_s"] == pytest.approx(150e6)        # 1 / mean(1/100, 1/300) MB/s


def test_a_fixed_per_forward_part_keeps_small_work_on_one_device():
    """`DeviceFacts.fixed_s`: the part of a forward a split does not divide. Where it is the whole
    forward (a tiny model, a small image), no split is predicted faster than one device."""
    model = costmodel.ModelFacts("unet", 4_000_000, (200_000,) * 15, 1e9, 16_384, attention_layers=7)
    device = costmodel.DeviceFacts(flops=1e10, budget=float("inf"), host_bw=5e9, peer_bw=1e8, latency=1e-3,
                                   overlap=0.0, step_s=0.1)
    allowed = ("resident", "cfg", "patch", "shard", "layersplit")
    split = {p.strategy: p.step_s for p in costmodel.predict(model, device, 2, cfg=7.0)}
    assert split["cfg"] == pytest.approx(0.05 + 16_384 / 1e8 + 1e-3)        # t/2 + one exchange
    assert costmodel.choose(costmodel.predict(model, device, 2, cfg=7.0), allowed).strategy == "cfg"
    whole = costmodel.predict(model, replace(device, fixed_s=0.1), 2, cfg=7.0)
    assert {p.strategy: p.step_s for p in whole}["cfg"] == pytest.approx(0.1 + 16_384 / 1e8 + 1e-3)
    assert costmodel.choose(whole, allowed).strategy == "resident"
    half = {p.strategy: p.step_s for p in costmodel.predict(model, replace(device, fixed_s=0.04), 2, cfg=7.0)}
    assert half["patch"] - split["patch"] == pytest.approx(0.04 / 2)        # fixed + (t - fixed)/2 vs t/2
