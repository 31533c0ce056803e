"""The dock widgets in a real napari viewer (Xvfb): runs with the tiny model, cancel, preview, stacks, errors."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_treg.plugin import restore_form
from napari_treg.plugin import restore_widget as restore_module
from napari_treg.plugin.layers import WHOLE_STACK
from napari_treg.plugin.messages import CANCELLED
from napari_treg.plugin.output_layers import PREVIEW_NAME
from napari_treg.plugin.simulate_widget import SimulateWidget


def _image(shape=(64, 64), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0, 1, shape) * (255 if dtype == np.uint8 else 1000)).astype(dtype)


def _errors() -> list[str]:
    return [n.message for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]


def _added(viewer, before: list[str]) -> list:
    return [layer for layer in viewer.layers if layer.name not in before]


def test_run_adds_a_layer_with_provenance(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    clean = viewer.add_image(_image(dtype=np.uint16), name="clean", colormap="green")
    simulate = SimulateWidget(viewer)
    simulate.image.value = clean
    simulate.operator.value = "gauss"
    simulate.sigma.value = 1.5
    measurement = simulate.simulate()
    assert measurement.metadata["treg_simulation"]["operator"] == {"name": "gauss", "sigma": 1.5}
    # choosing a simulated measurement brings its operator and its clean reference
    restore_widget.image.value = measurement
    assert restore_widget.operator.value == "gauss" and restore_widget.sigma.value == 1.5
    assert restore_widget.reference.value is clean
    restore_widget.prompt.value = "fluorescent nuclei"
    restore_widget.residual_layer.value = True
    before = [layer.name for layer in viewer.layers]
    original = measurement.data.copy()

    run_to_end(restore_widget)

    residual, result = _added(viewer, before)  # the residual goes below the result
    assert result.name == f"{measurement.name} TReg"
    assert result.data.shape == (64, 64) and result.colormap.name == "green"
    lo, hi = result.contrast_limits
    assert np.percentile(result.data, 0.5) == pytest.approx(lo, rel=1e-3) and lo < hi
    record = result.metadata["treg"]
    for key in ("params", "model", "seed", "residual", "seconds", "versions", "operator", "settings", "metrics"):
        assert key in record, key
    assert record["params"]["prompt"] == "fluorescent nuclei" and record["params"]["steps"] == 4
    assert record["settings"]["model"] == "tiny" and record["test_model"] is True
    assert record["metrics"]["psnr"] > 0 and "PSNR" in restore_widget.status.value
    assert set(record["versions"]) >= {"napari-treg", "torch"}
    assert residual.name == f"{result.name} residual" and residual.data.shape == (64, 64)
    assert not residual.visible and result.visible
    assert list(viewer.layers.selection) == [result] and viewer.layers.selection.active is result
    np.testing.assert_array_equal(measurement.data, original)
    assert PREVIEW_NAME not in viewer.layers
    assert restore_widget.run_button.enabled and not restore_widget.cancel_button.enabled
    assert restore_widget.progress_bar.native.value() == 4


def test_run_button_disabled_and_preview_updates_while_running(restore_widget, run_to_end, qtbot):
    viewer = restore_widget.viewer
    viewer.add_image(_image((32, 32)), name="y")
    restore_widget.operator.value = "denoise"
    updates, states = [], []

    def watch(event):
        layer = event.value
        if layer.metadata.get("treg_preview"):
            updates.append(layer.data.copy())
            layer.events.data.connect(lambda e: updates.append(layer.data.copy()))
            states.append((restore_widget.run_button.enabled, restore_widget.cancel_button.enabled))

    viewer.layers.events.inserted.connect(watch)
    run_to_end(restore_widget)
    assert len(updates) >= 3  # one preview per step (preview_every = 1 for 4 steps)
    assert all(update.shape == (32, 32) for update in updates)
    assert states == [(False, True)]
    assert PREVIEW_NAME not in viewer.layers


def _activity_cancel_button(widget):
    """The Cancel button of the run's bar in napari's activity dock (what a user clicks)."""
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    window = widget.viewer.window._qt_window
    (bar,) = [b for b in window.findChildren(QtLabeledProgressBar) if b.progress is widget.activity.progress]
    return bar.cancel_button


CANCEL_ACTIONS = {
    "widget": lambda widget: widget.cancel_button.native.click(),
    "activity dock": lambda widget: _activity_cancel_button(widget).click(),
    "closing the dock": lambda widget: widget.viewer.window.remove_dock_widget(widget.native),
}


@pytest.mark.parametrize("action", list(CANCEL_ACTIONS))
def test_cancel_from_anywhere_stops_within_a_step_and_adds_nothing(restore_widget, qtbot, monkeypatch, action):
    viewer = restore_widget.viewer
    layer = viewer.add_image(_image((32, 32)), name="y")
    original = layer.data.copy()
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 50
    done = []  # steps finished, counted in the worker thread
    run_request = restore_module.run_request

    def counting_run_request(request, holder, progress=None, status=None):
        def count(event):
            done.append(event.step)
            progress(event)

        return run_request(request, holder, count, status)

    monkeypatch.setattr(restore_module, "run_request", counting_run_request)
    at_cancel = []

    def cancel_at_second_step(name, args):
        if name == "step" and args[0].step == 2 and not at_cancel:
            CANCEL_ACTIONS[action](restore_widget)
            at_cancel.append(len(done))

    restore_widget.relay.called.connect(cancel_at_second_step)
    before = [layer.name for layer in viewer.layers]
    worker = restore_widget.run()
    qtbot.waitUntil(lambda: not restore_widget.is_running, timeout=120_000)
    assert at_cancel and len(done) <= at_cancel[0] + 1 < 50, (at_cancel, len(done))  # within one step
    assert [layer.name for layer in viewer.layers] == before  # no result, preview removed
    np.testing.assert_array_equal(layer.data, original)
    assert restore_widget.status.value == CANCELLED
    assert not _errors()
    assert worker.is_running is False


def test_stack_whole_and_current_plane(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    stack = viewer.add_image(_image((3, 32, 32), dtype=np.uint16), name="stack", scale=(2.0, 0.5, 0.5))
    restore_widget.image.value = stack
    restore_widget.operator.value = "gauss"
    restore_widget.preview.value = False
    assert not restore_widget.planes.native.isHidden()

    restore_widget.planes.value = WHOLE_STACK
    run_to_end(restore_widget)
    whole = viewer.layers[-1]
    assert whole.data.shape == (3, 32, 32) and whole.metadata["treg"]["planes"] == WHOLE_STACK

    restore_widget.image.value = stack
    restore_widget.planes.value = "current plane"
    viewer.dims.set_point(0, 4.0)  # world z = 4 -> plane 2
    run_to_end(restore_widget)
    plane = viewer.layers[-1]
    assert plane.data.shape == (1, 32, 32)
    assert plane.metadata["treg"]["plane_index"] == [2]
    assert plane.translate[0] == pytest.approx(4.0)


def test_super_resolution_rgb_output_geometry(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    small = viewer.add_image(
        _image((16, 16, 3), dtype=np.uint8), name="photo", rgb=True, scale=(2.0, 2.0), translate=(10, 20)
    )
    restore_widget.image.value = small
    restore_widget.operator.value = "sr"
    restore_widget.factor.value = 4
    run_to_end(restore_widget)
    result = viewer.layers[-1]
    assert result.rgb and result.data.shape == (64, 64, 3)
    np.testing.assert_allclose(result.scale, [0.5, 0.5])
    np.testing.assert_allclose(result.translate, [10 - 0.75, 20 - 0.75])


def test_simulate_super_resolution_overlays_its_source(make_napari_viewer):
    viewer = make_napari_viewer()
    clean = viewer.add_image(_image((32, 32)), name="clean", scale=(0.5, 0.5))
    widget = SimulateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = clean
    widget.operator.value = "sr"
    widget.factor.value = 4
    widget.noise.value = 0.0
    assert not widget.factor.native.isHidden() and widget.sigma.native.isHidden()
    measured = widget.simulate()
    assert measured.data.shape == (8, 8)
    np.testing.assert_allclose(measured.scale, [2.0, 2.0])
    np.testing.assert_allclose(measured.translate, [0.75, 0.75])
    assert measured.metadata["treg_simulation"]["operator"] == {"name": "sr", "factor": 4, "filter": "bicubic"}


def test_bad_input_is_a_notification_not_a_traceback(restore_widget):
    viewer = restore_widget.viewer
    assert restore_widget.run() is None  # no image at all
    viewer.add_image(_image((32, 32)), name="y")
    restore_widget.operator.value = "inpaint"  # and no mask
    assert restore_widget.run() is None
    viewer.add_labels(np.eye(16, dtype=np.uint8), name="small mask")
    restore_widget.mask.value = viewer.layers["small mask"]
    assert restore_widget.run() is None
    messages = _errors()
    assert any("Image layer" in m for m in messages) and any("Labels layer" in m for m in messages)
    assert any("mask is 16x16 but the image is 32x32" in m for m in messages)
    assert restore_widget.run_button.enabled and not restore_widget.is_running


def test_missing_weights_in_the_worker_become_a_notification(restore_widget, run_to_end, tmp_path):
    restore_widget.viewer.add_image(_image((32, 32)), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.model.value = "folder"
    restore_widget.model_path.value = tmp_path  # an empty folder: not a model
    assert not restore_widget.model_path.native.isHidden()
    before = len(restore_widget.viewer.layers)
    run_to_end(restore_widget)
    assert len(restore_widget.viewer.layers) == before
    message = _errors()[-1]
    assert "not a complete diffusers" in message and "tiny test model" in message
    status = restore_widget.status.value  # the reason itself, not "see the notification"
    assert status.startswith("The model could not be loaded:") and "not a complete diffusers" in status
    details = restore_widget.status_panel.details.value  # what follows the headline (issue 35)
    assert "tiny test model" not in status and "tiny test model" in details and status not in details


def test_out_of_memory_says_what_to_do(restore_widget, run_to_end, monkeypatch):
    import torch

    from napari_treg.plugin import restoration

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(restoration.Restorer, "restore", out_of_memory)
    restore_widget.viewer.add_image(_image((32, 32)), name="y")
    restore_widget.operator.value = "denoise"
    run_to_end(restore_widget)
    message = _errors()[-1]
    assert "Restore the current plane" in message and "low-memory mode" in message and "tile size" in message
    assert PREVIEW_NAME not in restore_widget.viewer.layers and restore_widget.run_button.enabled


def test_changing_the_model_releases_it(restore_widget, run_to_end):
    restore_widget.viewer.add_image(_image((32, 32)), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.preview.value = False
    run_to_end(restore_widget)
    holder = restore_widget._state.holder
    assert holder.prior is not None and holder.prior.is_test_model
    restore_widget.dtype.value = "float32"
    assert holder.prior is None


def test_closing_the_dock_releases_the_model(restore_widget, run_to_end, qtbot):
    viewer = restore_widget.viewer
    viewer.add_image(_image((32, 32)), name="y")
    restore_widget.operator.value = "denoise"
    run_to_end(restore_widget)
    holder = restore_widget._state.holder
    assert holder.prior is not None
    viewer.window.remove_dock_widget(restore_widget.native)  # what the dock's close button does
    assert holder.prior is None


def test_widget_parameters_are_named_after_restore_arguments(restore_widget):
    import inspect

    from napari_treg import restore
    from napari_treg.solver import TRegSettings

    arguments = set(inspect.signature(restore).parameters) | set(TRegSettings.__dataclass_fields__)
    for name in restore_form.RESTORE_OPTIONS + ("image", "operator", "model", "device", "dtype"):
        assert name in arguments
        assert getattr(restore_widget, name).name == name


@pytest.mark.parametrize(
    "data, operator, message",
    [
        (np.where(np.eye(32) > 0, np.nan, 1.0).astype(np.float32), "denoise", "NaN"),
        (np.full((32, 32), 5, np.uint16), "kernel", "negative"),
        (_image((30, 30)), "sr", None),  # fine: any measurement size works
    ],
)
def test_bad_image_content_is_a_notification(restore_widget, qtbot, data, operator, message):
    viewer = restore_widget.viewer
    viewer.add_image(data, name="y")
    before = data.copy()
    restore_widget.operator.value = operator
    if operator == "kernel":
        restore_widget.kernel.value = viewer.add_image(-np.ones((5, 5), np.float32), name="psf")
    restore_widget.preview.value = False
    count, errors_before = len(viewer.layers), len(_errors())
    restore_widget.run()
    qtbot.waitUntil(lambda: not restore_widget.is_running, timeout=120_000)
    new_errors = _errors()[errors_before:]
    np.testing.assert_array_equal(viewer.layers["y"].data, before)
    if message is None:
        assert not new_errors and len(viewer.layers) == count + 1
    else:
        assert any(message in m for m in new_errors), new_errors
        assert len(viewer.layers) == count and restore_widget.run_button.enabled


def test_large_images_in_tiles_and_the_low_memory_mode(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    viewer.add_image(_image((64, 64)), name="y")
    restore_widget.operator.value = "gauss"
    restore_widget.tile_size.value = 32
    restore_widget.tile_overlap.value = 16
    restore_widget.low_memory.value = True
    before = [layer.name for layer in viewer.layers]
    run_to_end(restore_widget)
    (result,) = _added(viewer, before)
    assert result.data.shape == (64, 64) and np.isfinite(result.data).all()
    record = result.metadata["treg"]
    assert record["tiling"]["tiles"] > 1 and record["params"]["tile_size"] == 32
    assert restore_widget._state.holder.prior.low_memory
    restore_widget.low_memory.value = False  # another model configuration: the loaded one is released
    assert restore_widget._state.holder.prior is None


# -- the fields come from the settings' specs (issue 29) ------------------------------------------


def test_both_docks_take_their_text_tile_and_noise_fields_from_the_settings(make_napari_viewer):
    """One default and one range per setting: the restore dock's negative prompt is TextSettings' (it was
    "out of focus, depth of field"), tile fields and the noise field carry RunSettings' ranges, and a tile
    size of 0 reads "off" in both docks (the batch dock showed "0")."""
    from napari_treg.engine.restorer import RunSettings
    from napari_treg.plugin.batch_widget import BatchWidget
    from napari_treg.plugin.restore_widget import RestoreWidget
    from napari_treg.settings import spec_named
    from napari_treg.solver.text import TextSettings

    viewer = make_napari_viewer()
    restore_dock, batch_dock = RestoreWidget(viewer), BatchWidget(viewer)
    assert restore_dock.negative_prompt.value == TextSettings().negative_prompt == ""
    assert restore_dock.prompt.value == batch_dock.prompt.value == TextSettings().prompt
    for name in ("tile_size", "tile_overlap"):
        spec = spec_named(RunSettings, name)
        for dock in (restore_dock, batch_dock):
            assert dock[name].max == spec.maximum, (name, dock)
    assert restore_dock.tile_size.native.text() == batch_dock.tile_size.native.text() == "off"
    assert restore_dock.noise.max == spec_named(RunSettings, "noise").maximum
    assert restore_dock.noise.native.text() == "unknown"
