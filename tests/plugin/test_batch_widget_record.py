"""The batch dock's layers carry the run's record as the restore dock's do (issue 33 item 6), kept through the
plugin's OME-TIFF writer; an ensemble with too few steps for a calibrated spread says so in the dock's status."""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

from napari_treg.engine.calibration import CALIBRATED_FROM_STEPS  # noqa: E402
from napari_treg.plugin.batch_widget import BatchWidget  # noqa: E402
from napari_treg.plugin.output_layers import MAP_KEY  # noqa: E402

#: the restore dock's record keys that say which run made a layer (the rest are its one result's numbers)
RUN_KEYS = ("params", "model", "device", "dtype", "seed", "versions", "input_layer", "operator", "settings", "planes")


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as c:
        yield c.scheduler_address


def test_every_batch_layer_carries_the_run_record_and_keeps_it_in_an_ome_tiff(
    make_napari_viewer, qtbot, tmp_path, scheduler
):
    from napari_treg.plugin.restore_widget import RestoreWidget

    stack = (np.random.default_rng(1).random((2, 16, 16)) * 500).astype(np.uint16)
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 16, 16)), name="stack")
    widget = BatchWidget(viewer)
    widget.image.value = layer
    widget.operator.value, widget.sigma.value = "gaussian_blur", 1.5
    widget.model.value, widget.steps.value, widget.samples.value, widget.seed.value = "analytic", 4, 2, 5
    widget.output.value, widget.scheduler.value = str(tmp_path / "out.zarr"), scheduler
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    # 4 steps: below the calibrated steps, and the dock's last line says so
    assert (
        f"With only 4 steps the spread is likely too small: use {CALIBRATED_FROM_STEPS['data-first']} or more"
        in widget.status.value
    )

    # the restore dock's record of an ensemble of the same stack, for its keys
    restore_dock = RestoreWidget(viewer)
    restore_dock.image.value = layer
    restore_dock.operator.value, restore_dock.sigma.value = "gaussian_blur", 1.5
    restore_dock.model.value, restore_dock.steps.value, restore_dock.samples.value = "analytic", 4, 2
    restore_dock.planes.value = "whole stack"
    assert restore_dock.run() is not None
    qtbot.waitUntil(lambda: not restore_dock.is_running, timeout=120_000)
    restore_record = viewer.layers["stack TReg std"].metadata["treg"]
    assert set(RUN_KEYS) <= set(restore_record)

    layers = [widget.result_layer, *widget.map_layers.values()]
    assert {layer.metadata[MAP_KEY] for layer in layers} == {"mean", "std", "data_share"}
    record = widget.result_layer.metadata["treg"]
    for shown in layers:
        assert shown.metadata["treg"] == record  # one record on every layer of the run, as the restore dock's
    assert set(RUN_KEYS) <= set(record)
    assert record["input_layer"] == restore_record["input_layer"] == "stack"
    assert record["operator"] == restore_record["operator"] and record["operator"]["sigma"] == pytest.approx(1.5)
    assert record["params"]["samples"] == 2 and record["params"]["steps"] == 4 and record["seed"] == 5
    for key in ("model", "device", "dtype"):
        assert record[key] == restore_record[key]
    units = record["batch"]["units"]
    assert record["batch"]["complete"] is True and len(units) == 2
    # unit p's ensemble: seeds seed + p * samples + k (no two units share one), its noise and its calibration note
    assert sorted(tuple(unit["ensemble"]["seeds"]) for unit in units.values()) == [(5, 6), (7, 8)]
    assert all(unit["ensemble"]["calibration"]["below"] for unit in units.values())

    # saved through the plugin's OME-TIFF writer and opened again: the same record
    std_layer = widget.map_layers["std"]
    viewer.layers.selection.active = std_layer
    path = tmp_path / "std.ome.tif"
    assert viewer.layers.save(str(path), selected=True, plugin="napari-treg") == [str(path)]
    (opened,) = viewer.open(str(path), plugin="napari-treg")
    assert opened.metadata["treg"] == record and opened.metadata[MAP_KEY] == "std"
    np.testing.assert_array_equal(opened.data, np.asarray(std_layer.data))
