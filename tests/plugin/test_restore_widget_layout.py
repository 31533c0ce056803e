"""The restore dock in a laptop-sized window (1280x720): after a failure with its details open, the form, Run
and Cancel stay usable; the status and details keep a bounded height of their own."""

from __future__ import annotations

from napari_treg.plugin.demo import open_demo

#: the form's scroll area must show at least this many pixels (the issue saw 67: two rows)
FORM_HEIGHT = 250


def _inside(widget, window) -> bool:
    """Whether ``widget`` is shown and lies wholly inside ``window``."""
    if not widget.isVisible():
        return False
    top_left = widget.mapTo(window, widget.rect().topLeft())
    bottom_right = widget.mapTo(window, widget.rect().bottomRight())
    return window.rect().contains(top_left) and window.rect().contains(bottom_right)


def test_a_failure_with_its_details_open_leaves_the_form_usable_at_1280x720(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 720)
    widget = open_demo(viewer, "fluorescence_blur")  # the default model: not downloadable here (offline)
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    assert not widget.details_button.native.isHidden()  # a failure with more to say than its headline
    widget.details_button.native.click()
    qtbot.wait(100)
    assert widget.status_panel.details_shown
    assert widget.scroll_area.viewport().height() >= FORM_HEIGHT
    for button in (widget.run_button.native, widget.cancel_button.native, widget.details_button.native):
        assert _inside(button, window)
    assert widget.status_panel.native.height() <= widget.native.height() // 2


def _cut_off(widget, viewport) -> bool:
    """Whether ``widget`` (shown) reaches beyond the right edge of the scroll area's ``viewport``."""
    right = widget.mapTo(viewport, widget.rect().topRight()).x()
    return right > viewport.width()


def test_the_activity_cancel_button_and_the_batch_status_are_not_cut_off_at_1280x720(make_napari_viewer, qtbot):
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar
    from qtpy.QtWidgets import QDockWidget, QScrollArea

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 720)
    widget = open_demo(viewer, "fluorescence_blur", model="analytic", steps=300)
    widget.preview.value = False
    viewer.window._status_bar._toggle_activity_dock(True)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.status_panel.progress_bar.native.value() > 0, timeout=60_000)
    dialog = viewer.window._qt_window._activity_dialog
    bars = dialog.findChildren(QtLabeledProgressBar)
    assert bars
    viewport = dialog.findChild(QScrollArea).viewport()
    qtbot.wait(100)
    assert not _cut_off(bars[0].cancel_button, viewport)
    widget.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=60_000)

    _, batch = viewer.window.add_plugin_dock_widget("napari-treg", "Batch on a cluster (TReg)", tabify=True)
    dock = batch.native
    while not isinstance(dock, QDockWidget):
        dock = dock.parent()
    dock.raise_()
    batch.status.value = "3 of 120 units done on 16 workers (2 failed: see the log beside the output)..."
    qtbot.wait(100)
    label = batch.status.native
    assert label.height() >= label.heightForWidth(label.width())  # every wrapped line shown


def test_the_form_is_never_wider_than_its_dock_at_1280x720(make_napari_viewer, qtbot):
    """The form was 401 px wide in a 309 px dock: the spin boxes' + buttons and the combo arrows were cut off."""
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1280, 720)
    widget = open_demo(viewer, "fluorescence_stack_sr")
    widget.operator.value = "widefield"
    widget.noise_model.value = "poisson-gaussian"
    qtbot.wait(200)
    assert widget.noise_estimate.value  # the estimate's text is shown, wrapped
    assert widget.scroll_area.widget().width() <= widget.scroll_area.viewport().width()
