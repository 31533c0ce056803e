"""The batch dock widget: a layer's dask data sent to a (threaded, in-process) dask cluster; result opens lazily."""

from __future__ import annotations

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

from napari_treg import restore  # noqa: E402
from napari_treg.plugin.batch_widget import BatchWidget, batch_settings, cluster_options  # noqa: E402


@pytest.fixture(scope="module")
def scheduler():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as c:
        yield c.scheduler_address


def test_form_values_become_restore_keywords():
    assert batch_settings(" ", 7, 3, "cells", 0, None) == {
        "model": "sd15",
        "steps": 7,
        "seed": 3,
        "prompt": "cells",
        "tile_size": None,
        "rgb": None,
    }
    assert batch_settings("analytic", 7, 3, "", 512, False)["tile_size"] == 512
    assert cluster_options("  ", 0) == {"scheduler": None, "workers": None}
    assert cluster_options("tcp://h:8786", 4) == {"scheduler": "tcp://h:8786", "workers": 4}


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

    from napari_treg import io

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
