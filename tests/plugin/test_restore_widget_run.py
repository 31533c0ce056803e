"""The restore widget around a run: its input leaving the viewer, the preview's data, what is selected after a
cancel, and which layer a new measurement makes the input."""

from __future__ import annotations

import numpy as np

from napari_treg.plugin.messages import CANCELLED
from napari_treg.plugin.output_layers import PREVIEW_NAME, preview_layer, show_preview


def _image(size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, (size, size)).astype(np.float32)


def _at_step(widget, step: int, action) -> list[int]:
    """Call ``action()`` once, when the widget has shown step ``step``; returns the steps shown."""
    shown: list[int] = []

    def on_relay(name, args):
        if name == "step":
            shown.append(args[0].step)
            if args[0].step == step:
                action()

    widget.relay.called.connect(on_relay)
    return shown


def test_removing_the_input_during_a_previewed_run_stops_it(restore_widget, qtbot):
    """Issue 35.5: napari crashed (segmentation fault, software OpenGL) when the input went during a previewed run."""
    viewer = restore_widget.viewer
    layer = viewer.add_image(_image(), name="y")
    restore_widget.image.value = layer
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value, restore_widget.preview.value = 50, True
    shown = _at_step(restore_widget, 3, lambda: viewer.layers.remove(layer))
    restore_widget.run()
    qtbot.waitUntil(lambda: not restore_widget.is_running, timeout=120_000)
    assert max(shown) < 50  # stopped, not run to the end over a layer that is gone
    assert len(viewer.layers) == 0 and preview_layer(viewer) is None  # no result, no preview left
    assert restore_widget.status.value.startswith("Stopped: the input layer 'y' was removed")


def test_the_preview_layer_owns_its_data(restore_widget):
    """The worker may reuse the array it sent; the layer napari draws must not change under it."""
    viewer = restore_widget.viewer
    layer = viewer.add_image(_image(), name="y")
    restore_widget.image.value = layer
    restore_widget.operator.value = "denoise"
    request = restore_widget.make_request()
    sent = _image()
    show_preview(viewer, request, sent)
    shown = viewer.layers[PREVIEW_NAME]
    sent[:] = -5.0
    assert shown.data is not sent and float(shown.data.min()) >= 0.0


def test_after_a_cancel_the_input_is_selected(restore_widget, qtbot):
    """Issue 35.5: after a cancel no layer was selected (the removed preview had been)."""
    viewer = restore_widget.viewer
    layer = viewer.add_image(_image(), name="y")
    restore_widget.image.value = layer
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value, restore_widget.preview.value = 20, True
    _at_step(restore_widget, 4, restore_widget.cancel)
    restore_widget.run()
    qtbot.waitUntil(lambda: not restore_widget.is_running, timeout=120_000)
    assert restore_widget.status.value == CANCELLED
    assert viewer.layers.selection.active is layer


def test_a_simulated_measurement_becomes_the_input(restore_widget):
    """Issue 35.5: after Simulate the dock stayed on the clean image, so Run restored the clean image."""
    from napari_treg.plugin.simulate_widget import SimulateWidget

    viewer = restore_widget.viewer
    clean = viewer.add_image(_image(), name="clean")
    assert restore_widget.image.value is clean
    simulate = SimulateWidget(viewer)
    simulate.image.value = clean
    simulate.operator.value = "gauss"
    measurement = simulate.simulate()
    assert restore_widget.image.value is measurement
    assert restore_widget.reference.value is clean and restore_widget.operator.value == "gauss"


def test_an_array_whose_last_axis_looks_like_channels_gets_a_hint(restore_widget):
    """Issue 35.5: a (Y, X, 2) array is Y images of X x 2 pixels to napari; it got no hint, only a size error."""
    viewer = restore_widget.viewer
    viewer.add_image(np.random.default_rng(0).random((32, 32, 2)).astype(np.float32), name="two")
    restore_widget.operator.value = "denoise"
    assert restore_widget.run() is None
    message = restore_widget.status.tooltip
    assert "looks like channels" in message and "channel_axis=-1" in message


def test_a_mask_of_another_size_is_named_as_such(restore_widget):
    """Issue 35.5: a wrong-size mask over an RGB image got 'every pixel missing', not its size."""
    viewer = restore_widget.viewer
    viewer.add_image(np.random.default_rng(0).random((32, 32, 3)).astype(np.float32), name="rgb", rgb=True)
    viewer.add_labels(np.ones((16, 16), np.uint8), name="mask")
    restore_widget.operator.value = "inpaint"
    restore_widget.mask.value = viewer.layers["mask"]
    assert restore_widget.run() is None
    assert restore_widget.status.value.startswith("Cannot restore: the mask is 16x16 but the image is 32x32")
