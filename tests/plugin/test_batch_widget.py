"""The batch dock widget: a layer's dask data sent to a (threaded, in-process) dask cluster; result opens lazily."""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

from napari_treg import restore  # noqa: E402
from napari_treg.engine.ensemble import MAX_SAMPLES  # noqa: E402
from napari_treg.engine.restorer import MAX_SEED, RunSettings  # noqa: E402
from napari_treg.io.files import companion  # noqa: E402
from napari_treg.models.options import ModelSettings  # noqa: E402
from napari_treg.plugin.batch_widget import BatchWidget, batch_settings, cluster_options  # noqa: E402
from napari_treg.solver import TRegSettings  # noqa: E402


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as c:
        yield c.scheduler_address


FORM = {"model": " ", "steps": 7, "seed": 3, "prompt": "cells", "guidance": 2.5, "tile_size": 0, "tile_overlap": 64}


def test_form_values_become_restore_keywords():
    assert batch_settings(FORM, None) == {
        "model": ModelSettings().model,  # blank: the default model
        "steps": 7,
        "seed": 3,
        "prompt": "cells",
        "guidance": 2.5,
        "tile_size": None,
        "tile_overlap": 64,
        "rgb": None,
    }
    assert batch_settings({**FORM, "model": "analytic", "tile_size": 512}, False)["tile_size"] == 512
    assert cluster_options("  ", 0) == {"scheduler": None, "workers": None}
    assert cluster_options("tcp://h:8786", 4) == {"scheduler": "tcp://h:8786", "workers": 4}


def test_fields_start_at_the_settings_defaults_and_ranges(make_napari_viewer):
    widget = BatchWidget(make_napari_viewer())
    method, run = TRegSettings(), RunSettings()
    assert widget.model.value == ModelSettings().model
    assert (widget.steps.value, widget.guidance.value) == (method.steps, method.guidance)
    assert (widget.seed.value, widget.tile_overlap.value) == (run.seed, run.tile_overlap)
    assert (widget.steps.min, widget.steps.max) == (1, 1000)  # TRegSettings's range
    assert widget.seed.max == MAX_SEED  # the engine's, not a 32-bit spin box's
    assert (widget.samples.value, widget.samples.min, widget.samples.max) == (1, 1, MAX_SAMPLES)
    assert widget.tile_size.value == 0 and widget.tile_overlap.native.isHidden()  # one piece: no overlap
    widget.tile_size.value = 512
    assert not widget.tile_overlap.native.isHidden()


@pytest.mark.parametrize(
    "tile_size, named",
    [(4, "tile_size must be at least 8, got 4"), (64, "tile_overlap must be smaller than tile_size (64)")],
)
def test_a_bad_setting_is_refused_before_any_cluster_starts(make_napari_viewer, tmp_path, tile_size, named):
    """A tile size the spin box takes but the engine refuses: the error on the main thread, no worker, no output."""
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    widget.image.value = viewer.add_image(np.ones((2, 16, 16), np.float32))
    widget.operator.value = "gaussian_blur"
    widget.model.value, widget.tile_size.value = "analytic", tile_size
    widget.output.value = str(tmp_path / "out.zarr")
    assert widget.run() is None and not widget.is_running
    assert named in widget.status.value
    assert any(named in str(record.message) for record in notification_manager.records)
    assert not (tmp_path / "out.zarr").exists()


def test_layer_stack_runs_on_cluster_and_opens_as_lazy_layer(make_napari_viewer, qtbot, tmp_path, scheduler):
    stack = (np.random.default_rng(0).random((3, 16, 16)) * 500).astype(np.uint16)
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 16, 16)), name="stack", scale=(2.0, 0.5, 0.5))
    widget = BatchWidget(viewer)
    widget.image.value = layer
    widget.operator.value = "super_resolution"
    widget.factor.value = 2
    widget.model.value, widget.steps.value, widget.seed.value = "analytic", 4, 1
    widget.output.value = str(tmp_path / "out.zarr")
    widget.scheduler.value = scheduler
    relayed = []  # what reached the main thread through the plugin's worker -> GUI relay
    widget.relay.called.connect(lambda name, args: relayed.append((name, widget.activity.progress.n)))
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    assert [name for name, _ in relayed] == ["started", "unit", "unit", "unit"]
    assert relayed[-1][1] == 3  # napari's progress (activity dock) counted every unit
    assert widget.activity is None  # and was closed at the end
    result = widget.result_layer
    assert result is not None and isinstance(result.data, da.Array)  # lazy
    assert list(result.scale) == [2.0, 0.25, 0.25]
    from napari_treg.operators import SuperResolution

    expected = restore(stack, SuperResolution(2), model="analytic", device="auto", steps=4, seed=1)
    assert np.array_equal(np.asarray(result.data), expected)
    assert widget.status.value.startswith("Done: 3 of 3 units")


def test_failed_units_message_points_to_the_log(make_napari_viewer, qtbot, tmp_path, scheduler):
    """Issue 23.6: the dock's message names the failed unit and the log with its detail."""
    from napari.utils.notifications import notification_manager

    from napari_treg.io import files as io

    folder = tmp_path / "in"
    folder.mkdir()
    io.write_image(folder / "good.npy", np.ones((16, 16), np.float32))
    (folder / "broken.npy").write_bytes(b"not a numpy file")
    widget = BatchWidget(make_napari_viewer())
    widget.source.value = "folder"
    widget.folder.value = str(folder)
    widget.operator.value = "gaussian_blur"
    widget.model.value, widget.steps.value = "analytic", 2
    widget.output.value = str(tmp_path / "out")
    widget.scheduler.value = scheduler
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    messages = [str(record.message) for record in notification_manager.records]
    log = tmp_path / "out" / "treg-batch.log"
    assert any("1 of 2 units failed: broken.npy" in m and str(log) in m for m in messages), messages
    assert "Traceback" in log.read_text()


def test_samples_add_the_ensemble_maps_as_lazy_layers_placed_as_the_result(
    make_napari_viewer, qtbot, tmp_path, scheduler
):
    import zarr

    stack = (np.random.default_rng(1).random((2, 16, 16)) * 500).astype(np.uint16)
    viewer = make_napari_viewer()
    layer = viewer.add_image(da.from_array(stack, chunks=(1, 16, 16)), name="stack", scale=(2.0, 0.5, 0.5))
    widget = BatchWidget(viewer)
    widget.image.value = layer
    widget.operator.value = "super_resolution"
    widget.factor.value = 2
    widget.model.value, widget.steps.value, widget.samples.value = "analytic", 4, 2
    widget.prompt.value, widget.guidance.value = "a disk", 2.0
    output = tmp_path / "out.zarr"
    widget.output.value, widget.scheduler.value = str(output), scheduler
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    assert widget.status.value.startswith("Done: 2 of 2 units")
    result = widget.result_layer
    expected = {
        "std": ("out.zarr (batch) std", "magma"),
        "data_share": ("out.zarr (batch) data share", "PiYG"),
        "text_influence": ("out.zarr (batch) text influence", "inferno"),
    }
    assert {name: (m.name, m.colormap.name) for name, m in widget.map_layers.items()} == expected
    for name, map_layer in widget.map_layers.items():
        assert map_layer in viewer.layers and isinstance(map_layer.data, da.Array)  # lazy
        assert map_layer.data.shape == result.data.shape == (2, 32, 32)
        assert list(map_layer.scale) == list(result.scale) == [2.0, 0.25, 0.25]
        assert list(map_layer.translate) == list(result.translate)
        stored = zarr.open_array(str(companion(output, name)))[:]
        assert np.array_equal(np.asarray(map_layer.data), stored) and stored.max() > 0
    assert list(widget.map_layers["data_share"].contrast_limits) == [0.0, 1.0]


def test_a_folder_ensemble_says_where_its_maps_are(make_napari_viewer, qtbot, tmp_path, scheduler):
    from napari_treg.io import files as io

    folder = tmp_path / "in"
    folder.mkdir()
    io.write_image(folder / "cells.tif", (np.random.default_rng(2).random((16, 16)) * 500).astype(np.uint16))
    widget = BatchWidget(make_napari_viewer())
    widget.source.value, widget.folder.value = "folder", str(folder)
    widget.operator.value = "gaussian_blur"
    widget.model.value, widget.steps.value, widget.samples.value = "analytic", 2, 2
    widget.output.value, widget.scheduler.value = str(tmp_path / "out"), scheduler
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    assert "<stem>.std<suffix>, <stem>.data_share<suffix>" in widget.status.value
    assert (tmp_path / "out" / "cells.std.tif").exists() and not widget.map_layers


def _stack_widget(viewer, stack, scheduler, **layer_kwargs):
    layer = viewer.add_image(da.from_array(stack, chunks=(1, *stack.shape[1:])), name="stack", **layer_kwargs)
    widget = BatchWidget(viewer)
    widget.image.value = layer
    widget.operator.value, widget.factor.value = "super_resolution", 2
    widget.model.value, widget.steps.value, widget.scheduler.value = "analytic", 2, scheduler
    return widget, layer


def _run(widget, qtbot, output) -> None:
    widget.output.value = str(output)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)


def test_a_run_to_another_output_gets_layers_named_after_it(make_napari_viewer, qtbot, tmp_path, scheduler):
    """Issue 35.5: the second store's result and maps were the first store's layers, under its name."""
    stack = (np.random.default_rng(3).random((1, 16, 16)) * 500).astype(np.uint16)
    viewer = make_napari_viewer()
    widget, _ = _stack_widget(viewer, stack, scheduler)
    widget.samples.value = 2
    _run(widget, qtbot, tmp_path / "first.zarr")
    first = widget.result_layer
    _run(widget, qtbot, tmp_path / "second.zarr")
    assert first in viewer.layers and first.name == "first.zarr (batch)"
    assert widget.result_layer is not first and widget.result_layer.name == "second.zarr (batch)"
    assert {m.name for m in widget.map_layers.values()} == {"second.zarr (batch) std", "second.zarr (batch) data share"}
    assert "first.zarr (batch) std" in viewer.layers  # the first run's maps stay as they were


def test_the_result_is_shown_as_its_input(make_napari_viewer, qtbot, tmp_path, scheduler):
    """Issue 35.5: contrast [0, 1] for data in the hundreds (saturated white); units and colormap dropped."""
    stack = (200 + np.random.default_rng(4).random((2, 16, 16)) * 500).astype(np.uint16)
    viewer = make_napari_viewer()
    widget, layer = _stack_widget(viewer, stack, scheduler, colormap="magenta", units=("um", "um", "um"))
    layer.axis_labels = ("z", "y", "x")
    _run(widget, qtbot, tmp_path / "out.zarr")
    result = widget.result_layer
    assert widget.status.value.startswith("Done")
    assert list(result.contrast_limits) == pytest.approx(list(layer.contrast_limits))
    assert result.contrast_limits[1] > 100
    assert result.colormap.name == "magenta"
    assert [str(unit) for unit in result.units] == ["micrometer"] * 3
    assert tuple(result.axis_labels) == ("z", "y", "x")


def test_the_operator_follows_the_record_of_the_layer(make_napari_viewer):
    """Issue 35.5: on the x2 box-binned stack sample the dock kept x4 bicubic and restored with it."""
    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    assert (widget.factor.value, widget.filter.value) == (4, "bicubic")  # the dock's own default
    viewer.open_sample("napari-treg", "fluorescence_stack_sr")
    measured = next(layer for layer in viewer.layers if "treg_simulation" in layer.metadata)
    widget.image.value = measured
    assert (widget.operator.value, widget.factor.value, widget.filter.value) == ("sr", 2, "box")
