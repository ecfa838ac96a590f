"""SaveImage and SaveLatent never overwrite a file: a name is taken by creating the file
exclusively, and a name already taken (by another prompt saving at the same moment, or by a
prefix the folder scan cannot see) moves the counter on."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from diffmesh.config.paths import Paths
from diffmesh.nodes import io
from diffmesh.nodes.base import NodeContext

WRITERS = 12


@pytest.fixture
def paths(tmp_path):
    paths = Paths.build(tmp_path)
    paths.ensure_dirs()
    return paths


def _ctx(paths, node_id: str = "9") -> NodeContext:
    return NodeContext(engine=None, paths=paths, node_id=node_id, prompt={}, extra_data={}, state={})


def _at_once(paths, save) -> list:
    """`save(ctx, i)` from WRITERS threads released together; their results in order of i."""
    barrier = threading.Barrier(WRITERS)
    results: list = [None] * WRITERS
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = save(_ctx(paths), i)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    return results


def test_images_saved_at_once_with_one_prefix_get_distinct_files_each_with_its_own_content(paths):
    def save(ctx, i):
        image = torch.full((1, 384, 384, 3), i / WRITERS)      # (B,H,W,3): writer i's colour
        return io.save_image(ctx, image, "same/ComfyUI", prompt={"writer": i})["ui"]["images"][0]["filename"]

    names = _at_once(paths, save)
    assert len(set(names)) == WRITERS
    assert sorted(p.name for p in (paths.output_dir / "same").iterdir()) == sorted(names)
    for i, name in enumerate(names):
        with Image.open(paths.output_dir / "same" / name) as png:
            assert json.loads(png.text["prompt"]) == {"writer": i}
            assert png.getpixel((0, 0))[0] == int(255 * i / WRITERS)


def test_latents_saved_at_once_with_one_prefix_get_distinct_files_each_with_its_own_content(paths):
    def save(ctx, i):
        samples = torch.full((1, 4, 96, 96), float(i))
        return io.save_latent(ctx, {"samples": samples}, "latents/x", prompt={"writer": i})["ui"]["latents"][0]["filename"]

    names = _at_once(paths, save)
    assert len(set(names)) == WRITERS
    for i, name in enumerate(names):
        with safe_open(str(paths.output_dir / "latents" / name), "pt") as f:
            assert json.loads(f.metadata()["prompt"]) == {"writer": i}
            assert f.get_tensor("latent_tensor")[0, 0, 0, 0].item() == float(i)


def test_batch_num_prefix_takes_the_next_counter_instead_of_overwriting(paths):
    """The folder scan looks for the prefix with `%batch_num%` in it, which no written name holds,
    so it finds counter 1 every time; only the exclusive create notices the file is there."""
    first = io.save_image(_ctx(paths), torch.zeros(2, 8, 8, 3), "b%batch_num%", prompt={"run": 1})
    second = io.save_image(_ctx(paths), torch.ones(2, 8, 8, 3), "b%batch_num%", prompt={"run": 2})
    names = [r["filename"] for r in first["ui"]["images"] + second["ui"]["images"]]
    assert names[:2] == ["b0_00001_.png", "b1_00002_.png"]
    assert len(set(names)) == 4
    for run, result in ((1, first), (2, second)):
        for entry in result["ui"]["images"]:
            with Image.open(paths.output_dir / entry["filename"]) as png:
                assert json.loads(png.text["prompt"]) == {"run": run}


def test_a_folder_in_the_way_of_a_name_is_skipped_not_written_into(paths):
    (paths.output_dir / "y0_00001_.png").mkdir()         # a name the folder scan does not count
    result = io.save_image(_ctx(paths), torch.zeros(1, 8, 8, 3), "y%batch_num%")
    assert result["ui"]["images"][0]["filename"] == "y0_00002_.png"
