"""Cost-model rows for the hybrids with patch parallel and layer split's pipeline: which rows appear
for which job, and the pipeline's shape (M micro-batches through N stages)."""

from __future__ import annotations

from diffmesh.engine.costmodel import DeviceFacts, ModelFacts, choose, predict


def _unet(rows: int) -> ModelFacts:
    return ModelFacts(kind="unet", total_bytes=4_000_000, block_bytes=(500_000,) * 6, flops=1e12,
                      hidden_bytes=1_000 * rows, attention_layers=4, rows=rows)


DEVICE = DeviceFacts(flops=1e12, budget=1e12, host_bw=1e12, peer_bw=1e12, latency=0.0, step_s=8.0)


def _rows(preds) -> dict:
    return {p.strategy: p for p in preds}


def test_cfg_patch_needs_cfg_and_four_devices_batch_patch_a_batch():
    assert "cfg_patch" in _rows(predict(_unet(2), DEVICE, 4, cfg=5.0))
    assert "cfg_patch" not in _rows(predict(_unet(2), DEVICE, 2, cfg=5.0))
    assert "batch_patch" not in _rows(predict(_unet(2), DEVICE, 4, cfg=5.0))      # one image, cond + uncond
    batch = _rows(predict(_unet(2), DEVICE, 4, cfg=1.0))["batch_patch"]           # two images
    assert "2 groups of 2" in batch.note
    assert "batch_patch" not in _rows(predict(_unet(1), DEVICE, 4, cfg=1.0))


def test_layer_split_pipelines_rows_through_its_stages():
    serial = _rows(predict(_unet(1), DEVICE, 2))["layersplit"]
    four = _rows(predict(_unet(4), DEVICE, 2))["layersplit"]
    assert abs(serial.step_s - 8.0) < 1e-6 and "serial" in serial.note
    assert abs(four.step_s - 8.0 * 5 / 8) < 1e-6 and "pipeline of 4" in four.note   # (M + N - 1) / (M N)


def test_a_transformer_gets_no_patch_rows():
    dit = ModelFacts(kind="dit", total_bytes=4_000_000, block_bytes=(500_000,) * 6, flops=1e12,
                     hidden_bytes=4_000, rows=2)
    names = set(_rows(predict(dit, DEVICE, 4, cfg=5.0)))
    assert not names & {"patch", "cfg_patch", "batch_patch"} and "cfg_sequence" in names
    assert choose(predict(dit, DEVICE, 4, cfg=5.0)).strategy in ("sequence", "cfg_sequence", "cfg")
