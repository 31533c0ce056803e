"""The restore widget as a user meets it (issue 14): settings follow the layer, warnings reach the
user, the dock fits a laptop screen, results are placed and named sensibly, no stray warnings."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_treg.plugin.output_layers import PREVIEW_NAME
from napari_treg.plugin.restore_form import DOCK_WIDTH
from napari_treg.plugin.restore_widget import RestoreWidget


def _messages(severity=None) -> list[str]:
    return [n.message for n in notification_manager.records if severity is None or n.severity == severity]


def _settle(qtbot, ms: int = 200) -> None:
    qtbot.wait(ms)


def test_docked_before_a_sample_the_widget_picks_the_visible_measurement(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.open_sample("napari-treg", "fluorescence_blur")
    assert widget.image.value.name == "nuclei (blurred)"  # not the hidden clean layer
    assert widget.operator.value == "gauss" and widget.sigma.value == 3.0
    assert widget.noise.value == pytest.approx(0.02)  # recorded by the sample
    assert widget.reference.value.name == "nuclei (clean)"
    # a TReg result added later is never chosen by itself
    viewer.add_image(np.zeros((8, 8)), name="old result", metadata={"treg": {"model": "tiny"}})
    assert widget.image.value.name == "nuclei (blurred)"


def test_settings_follow_the_chosen_layer_or_are_cleared(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.open_sample("napari-treg", "photograph_inpainting")
    viewer.open_sample("napari-treg", "photograph_sr")
    cat, astronaut = viewer.layers["cat (scratched)"], viewer.layers["astronaut (4x downsampled)"]

    widget.image.value = cat
    assert widget.operator.value == "inpaint" and widget.mask.value.name == "cat scratches (mask)"
    assert widget.reference.value.name == "cat (clean)" and widget.noise.value == pytest.approx(0.01)

    widget.image.value = astronaut
    assert widget.operator.value == "sr" and widget.factor.value == 4 and widget.filter.value == "bicubic"
    assert widget.reference.value.name == "astronaut (clean)"  # not the cat's, though one was chosen
    assert widget.mask.value is None

    plain = viewer.add_image(np.zeros((32, 32), np.float32), name="plain")
    widget.image.value = plain
    assert widget.reference.value is None and widget.noise.value == 0.0  # unknown, not another layer's
    assert widget.operator.value == "gauss" and widget.sigma.value == 2.0  # the defaults again
    assert widget.mask.value is None and widget.kernel.value is None


def test_simulations_record_their_noise_and_the_widget_takes_it(make_napari_viewer):
    from napari_treg.plugin.simulate_widget import SimulateWidget

    viewer = make_napari_viewer()
    clean = viewer.add_image(np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32), name="clean")
    simulate = SimulateWidget(viewer)
    simulate.image.value = clean
    simulate.operator.value = "motion"
    simulate.noise.value = 0.1
    measurement = simulate.simulate()
    assert measurement.metadata["treg_simulation"]["noise"] == pytest.approx(0.1)
    widget = RestoreWidget(viewer)
    widget.image.value = measurement
    assert widget.noise.value == pytest.approx(0.1) and widget.operator.value == "motion"
    assert widget.reference.value is clean


def test_the_preview_is_never_offered_as_an_input(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    viewer.add_image(np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32), name="y")
    restore_widget.operator.value = "denoise"
    offered = []

    def watch(event):
        if event.value.name == PREVIEW_NAME:
            offered.append(
                {
                    w: [layer.name for layer in getattr(restore_widget, w).choices if layer is not None]
                    for w in ("image", "reference", "kernel")
                }
            )

    viewer.layers.events.inserted.connect(watch)
    run_to_end(restore_widget)
    assert offered and all(PREVIEW_NAME not in names for names in offered[0].values()), offered


def test_warnings_of_a_run_become_notifications(restore_widget, run_to_end):
    restore_widget.viewer.add_image(np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.prompt.value = "fluorescent nuclei " * 100  # far beyond the text encoder's 77 tokens
    restore_widget.steps.value = 1
    run_to_end(restore_widget)
    warnings = _messages(NotificationSeverity.WARNING)
    assert any("77 tokens" in message for message in warnings), warnings


def test_reruns_get_short_unique_names_and_the_status_separates_model_loading(restore_widget, run_to_end, monkeypatch):
    import time

    from napari_treg.models import tiny
    from napari_treg.models.loading import clear_model_cache

    build = tiny.build_tiny_prior

    def slow_build(*args, **kwargs):  # a fast CPU builds the tiny model in under the 0.05 s the status shows
        time.sleep(0.2)
        return build(*args, **kwargs)

    monkeypatch.setattr(tiny, "build_tiny_prior", slow_build)
    clear_model_cache()  # the first run loads the model here, whatever earlier tests loaded
    viewer = restore_widget.viewer
    viewer.add_image(np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 1
    run_to_end(restore_widget)
    first = restore_widget.status.value
    restore_widget.image.value = viewer.layers["y"]
    run_to_end(restore_widget)
    second = restore_widget.status.value
    assert [layer.name for layer in viewer.layers] == ["y", "y TReg", "y TReg #2"]
    assert "loading the model" in first and "loading the model" not in second  # loaded once, then kept
    assert viewer.layers["y TReg"].metadata["treg"]["load_seconds"] > 0


def test_a_failed_validation_updates_the_status_line(restore_widget):
    restore_widget.viewer.add_image(np.zeros((32, 32), np.float32), name="y")
    restore_widget.operator.value = "inpaint"  # and no mask
    assert restore_widget.run() is None
    assert restore_widget.status.value.startswith("Cannot restore: choose the mask")


def test_a_constant_image_is_reported_sensibly(restore_widget, run_to_end):
    restore_widget.viewer.add_image(np.full((32, 32), 7.0, np.float32), name="flat")
    restore_widget.operator.value = "denoise"
    restore_widget.noise.value = 0.01
    restore_widget.steps.value = 1
    run_to_end(restore_widget)
    status = restore_widget.status.value
    assert "one value everywhere" in status and "||Ax - y|| / ||y|| = 0" not in status, status


def test_a_normal_run_shows_no_qt_deprecation_or_units_warning(make_napari_viewer, qtbot):
    seen = len(notification_manager.records)
    viewer = make_napari_viewer(show=True)
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget)
    viewer.open_sample("napari-treg", "fluorescence_stack_sr")  # a stack in µm; the preview is one plane
    widget.model.value, widget.device.value, widget.steps.value = "tiny", "cpu", 2
    assert widget.preview.value
    worker = widget.run()
    assert worker is not None
    finished = []
    worker.finished.connect(lambda: finished.append(widget.status.value))
    qtbot.waitUntil(lambda: bool(finished), timeout=240_000)
    _settle(qtbot)
    messages = [n.message for n in notification_manager.records[seen:]]
    assert not [m for m in messages if "deprecated" in m or "Inconsistent units" in m], messages
    assert widget.status.value.startswith("Done"), (widget.status.value, finished, messages)


def test_the_dock_fits_a_laptop_screen_with_advanced_open(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1366, 768)
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Restore (TReg)")
    viewer.open_sample("napari-treg", "fluorescence_blur")
    widget.advanced_frame.expand(animate=False)
    _settle(qtbot, 500)
    dock = widget.native.parent()
    assert dock.width() <= DOCK_WIDTH + 30, dock.width()
    run = widget.run_button.native
    bottom = run.mapTo(window, run.rect().bottomLeft()).y()
    assert run.isVisible() and bottom <= window.height(), (bottom, window.height())
    assert widget.scroll_area.verticalScrollBar().maximum() > 0  # the settings scroll instead
    assert widget.advanced.get_widget("model") is None and not widget.model.native.isHidden()
    assert widget.tile_size.native.text() == "off"


def test_the_operator_choice_takes_the_registry_aliases(qtbot):
    from napari.components import ViewerModel

    from napari_treg.plugin.forms import operator_widgets

    combo = operator_widgets(ViewerModel(), operator="super_resolution")[0]
    assert combo.value == "sr"
    combo.value = "gaussian_blur"  # the names older scripts and records use
    assert combo.value == "gauss" and combo.native.currentText() == "Deblur: Gaussian"
