"""Batch runs of z-stacks by a 3-D PSF: one unit is one file's volume, or with ``tile_size`` each of its Y-X
tiles is a task of its own; identical to local ``restore`` either way."""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from napari_treg import InvalidInputError, io, restore  # noqa: E402
from napari_treg.batch import restore_many  # noqa: E402
from napari_treg.operators import VolumeBlur  # noqa: E402

SETTINGS = {"model": "analytic", "device": "cpu", "steps": 3, "seed": 5}
PSF = VolumeBlur(np.ones((3, 3, 3)))


def test_each_file_is_one_volume_and_matches_a_local_run(tmp_path):
    from napari_treg.batch.cluster import local_cluster

    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    stacks = {f"stack{i}.tif": (np.random.default_rng(i).random((4, 16, 16)) * 1000).astype(np.uint16) for i in (0, 1)}
    for name, stack in stacks.items():
        io.write_image(source / name, stack)
    with local_cluster(workers=1) as cluster, distributed.Client(cluster, set_as_default=False) as client:
        report = restore_many(str(source), str(target), PSF, client=client, **SETTINGS)
    assert report.ok and report.computed == 2
    for name, stack in stacks.items():
        assert np.array_equal(io.read_image(target / name), restore(stack, PSF, **SETTINGS)), name


def test_the_y_x_tiles_of_a_stack_are_tasks_of_their_own_and_the_result_equals_a_local_run(tmp_path):
    import json

    from napari_treg.batch.cluster import local_cluster

    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    stack = (np.random.default_rng(2).random((4, 24, 20)) * 1000).astype(np.uint16)
    small = (np.random.default_rng(3).random((4, 16, 16)) * 1000).astype(np.uint16)  # one tile: one task
    io.write_image(source / "stack.tif", stack)
    io.write_image(source / "small.tif", small)
    tiled = {**SETTINGS, "tile_size": 16, "tile_overlap": 4, "prompt": "a disk"}
    with local_cluster(workers=2) as cluster, distributed.Client(cluster, set_as_default=False) as client:
        report = restore_many(str(source), str(target), PSF, client=client, **tiled)
        again = restore_many(str(source), str(target), PSF, client=client, **tiled)
    assert report.ok and report.computed == 2 and again.skipped == 2
    assert "tile_units" not in json.loads((target / "small.tif.treg.json").read_text())
    np.testing.assert_array_equal(io.read_image(target / "small.tif"), restore(small, PSF, **tiled))
    record = json.loads((target / "stack.tif.treg.json").read_text())
    assert record["tile_units"] == 4 and record["tiling"]["tiles"] == 4
    local, info = restore(stack, PSF, return_info=True, **tiled)
    np.testing.assert_array_equal(io.read_image(target / "stack.tif"), local)
    assert record["residual"] == info["residual"] and record["text_conflict"] == info["text_conflict"]


def test_an_array_source_is_refused_before_any_work(tmp_path):
    with pytest.raises(InvalidInputError, match="restores whole z-stacks"):
        restore_many(np.zeros((4, 16, 16), np.float32), str(tmp_path / "out.zarr"), PSF, **SETTINGS)
