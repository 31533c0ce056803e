"""The "Restore (TReg)" dock widget: a thin Qt shell around :func:`napari_treg.restore`.

Every parameter widget is named after a keyword argument of ``restore`` (``image``,
``operator``, ``prompt``, ``steps``, ``seed``, ``model``, ...), so from the napari
console::

    w = viewer.window.add_plugin_dock_widget("napari-treg", "Restore (TReg)")[1]
    w.prompt.value = "fluorescent cell nuclei"
    w.steps.value = 50
    worker = w.run()

This module declares the widget and wires its signals; the rest lives by responsibility:
the form and how it follows the chosen layer in :mod:`.restore_form`, the run itself (no
Qt) in :mod:`.restoration`, the worker thread and napari's progress in :mod:`.worker`, the
layers a run adds in :mod:`.output_layers`, the status line and progress bar in
:mod:`.status`, and their texts in :mod:`.messages`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container
from napari.utils.notifications import show_info

from napari_treg.engine.restorer import Progress
from napari_treg.errors import Cancelled, TRegError
from napari_treg.imaging.metrics import format_metrics
from napari_treg.plugin import restore_form
from napari_treg.plugin.choices import RANDOM_TEXT_MODELS
from napari_treg.plugin.layers import result_name
from napari_treg.plugin.messages import (
    Note,
    done_line,
    ensemble_note,
    ensemble_step_line,
    explain_error,
    fit_note,
    input_removed_line,
    is_constant,
    text_check_notes,
)
from napari_treg.plugin.noise_fields import prefill_photon_fields
from napari_treg.plugin.output_layers import add_outputs, remove_preview, run_outputs, show_preview, taken_names
from napari_treg.plugin.restoration import Outcome, RestoreRequest, run_request
from napari_treg.plugin.status import StatusPanel
from napari_treg.plugin.warmup import start_background_imports
from napari_treg.plugin.worker import ActivityProgress, CloseWatcher, Relay, RunState, shutdown, start_worker
from napari_treg.solver.schedules import DEFAULT_SCHEDULE

if TYPE_CHECKING:
    import napari

#: the run's name in napari's activity dock: short, so its Cancel button fits the dock's 520 px beside the step counts
#: ("TReg: restoring:" pushed it out of view at 1280x720); the status panel says what the run is doing
ACTIVITY_NAME = "TReg"
#: the widget starts from the schedule every front end uses (data-first: docs/method.md)
WIDGET_SCHEDULE = DEFAULT_SCHEDULE


class RestoreWidget(Container):
    """Restore an Image layer with TReg: measurement, operator, model, text, output options."""

    def __init__(self, viewer: napari.viewer.Viewer):
        sections = restore_form.build_sections(viewer, WIDGET_SCHEDULE)
        panel = StatusPanel()
        super().__init__(labels=False, widgets=[sections[-1], panel])
        self.viewer = viewer
        self.worker = None
        self.activity: ActivityProgress | None = None  # the run's bar in napari's activity dock
        self._sections = (*sections, panel)
        self._state = RunState()
        self._stop_reason: str | None = None  # why a run was stopped other than by Cancel
        self._memory = restore_form.SetFromLayer()
        self.relay = Relay(self.native, step=self._on_step, status=self._on_status)
        self.scroll_area, self.advanced_frame = restore_form.frame_sections(sections[:-1])
        self.native.layout().insertWidget(0, self.scroll_area, 1)
        self.native.setMaximumWidth(restore_form.DOCK_WIDTH)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.operator.changed.connect(self._update_visibility)
        self.kernel.changed.connect(self._update_visibility)  # a 3-D PSF layer: the stack is one volume
        self.kernel_file.changed.connect(self._open_psf_file)
        self.image.changed.connect(self._image_changed)
        self.noise_model.changed.connect(self._noise_model_changed)
        for widget in (self.model, self.model_path, self.device, self.dtype, self.low_memory):
            widget.changed.connect(self._model_changed)
        viewer.layers.events.inserted.connect(self._layer_inserted)
        viewer.layers.events.removed.connect(self._layer_removed)
        viewer.layers.events.reordered.connect(self.reset_choices)
        # stop a run and free the model when the widget goes: its dock closed (it is then un-parented) or deleted
        stop = functools.partial(shutdown, self._state)
        self._close_watcher = CloseWatcher(self.native, stop)
        self.native.destroyed.connect(stop)
        self._prefer_visible_measurement()
        self._image_changed()
        start_background_imports()  # so the first Run does not wait for them

    def reset_choices(self, *_: Any) -> None:
        for section in self._sections:
            section.reset_choices()

    # -- scripting: widget.prompt, widget.steps, ... ----------------------------------------

    def __getattr__(self, name: str) -> Any:
        for section in self.__dict__.get("_sections", ()):
            widget = section if section.name == name else section.get_widget(name)
            if widget is not None:
                return widget
        return super().__getattr__(name)

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    # -- the form follows the layers -----------------------------------------------------------

    def _update_visibility(self, *_: Any) -> None:
        restore_form.update_visibility(self)

    def _layer_inserted(self, event: Any) -> None:
        """New layers are offered; a new visible measurement replaces a hidden or derived choice."""
        self.reset_choices()
        if restore_form.takes_new_layer(event.value, self.image.value, self.is_running):
            self.image.value = event.value

    def _layer_removed(self, event: Any) -> None:
        """A run whose input leaves the viewer stops at once, and its preview goes with it."""
        request = self._state.request
        if request is not None and event.value is request.source and not request.cancel.is_set():
            self._stop_reason = input_removed_line(request.source.name)
            request.cancel.set()
            self.cancel_button.enabled = False
            remove_preview(self.viewer)
            self.status_panel.say(self._stop_reason)
        self.reset_choices()

    def _prefer_visible_measurement(self) -> None:
        """At start: the top visible layer that is not a TReg result (the choices are ranked that way)."""
        self.image.reset_choices()
        choices = [layer for layer in self.image.choices if layer is not None]
        if choices and self.image.value is not choices[0]:
            self.image.value = choices[0]

    def _open_psf_file(self, *_: Any) -> None:
        try:
            restore_form.open_psf_file(self, self.viewer)
        except TRegError as error:
            self.status_panel.failed(explain_error(error))

    def _image_changed(self, *_: Any) -> None:
        restore_form.follow_layer(self, self.viewer, self._memory)

    def _noise_model_changed(self, *_: Any) -> None:
        """The Poisson-Gaussian fields, pre-filled from the estimate on the chosen layer."""
        prefill_photon_fields(self, self.image.value)
        self._update_visibility()

    def _model_changed(self, *_: Any) -> None:
        self._update_visibility()
        self._state.holder.release()

    # -- running -------------------------------------------------------------------------------

    def make_request(self) -> RestoreRequest:
        """Read the widgets into a :class:`RestoreRequest` (main thread; raises InvalidInputError on bad input)."""
        return restore_form.read_request(self, self.viewer)

    def run(self, *_: Any):
        """Start restoring in a thread worker; returns the worker (None if nothing started)."""
        if self.is_running:
            show_info("A restoration is already running: wait for it or press Cancel.")
            return None
        try:
            request = self.make_request()
        except (TRegError, ValueError) as error:
            self.status_panel.failed(explain_error(error))
            return None
        self._state.request = request
        self._stop_reason = None
        self._set_running(True)
        self.activity = ActivityProgress(ACTIVITY_NAME, cancel=self.cancel)
        self._on_status(f"loading model {request.model.model}", None)
        work = functools.partial(
            run_request,
            request,
            self._state.holder,
            progress=self.relay.sender("step"),
            status=self.relay.sender("status"),
        )
        self.worker = start_worker(work, self._on_returned, self._on_errored, self._on_finished)
        return self.worker

    def cancel(self, *_: Any) -> None:
        """Stop the running restoration within one step; the preview is removed and nothing is added."""
        request = self._state.request
        if request is not None:
            request.cancel.set()
            self.cancel_button.enabled = False
            self.status_panel.say("Cancelling…")

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running

    # -- worker callbacks (main thread) ----------------------------------------------------------

    def _on_status(self, message: str, fraction: float | None) -> None:
        if self._state.request is not None:
            self.status_panel.busy(message, fraction)

    def _on_step(self, event: Progress) -> None:
        request = self._state.request
        if request is None or request.cancel.is_set():
            return
        ensemble = request.samples > 1
        self.status_panel.step(event, ensemble_step_line(event, request.samples) if ensemble else None)
        if event.preview is not None and self.preview.value:
            show_preview(self.viewer, request, event.preview)
        if self.activity is not None:
            self.activity.update(event.step, event.total, ACTIVITY_NAME)

    def _on_returned(self, outcome: Outcome) -> None:
        request = self._state.request
        remove_preview(self.viewer)
        if request is None:
            return
        if request.cancel.is_set():  # cancelled after the last step: still nothing is added
            self._cancelled(request)
            return
        try:
            self.show_result(request, outcome)
        except Exception as error:  # noqa: BLE001 - a display problem must not leave the widget stuck
            self.status_panel.failed(f"The result could not be shown: {error}")
            return
        for message in outcome.warnings:
            self.warn(message)
        _, conflict = text_check_notes(outcome.info, request.model.model in RANDOM_TEXT_MODELS)
        if conflict is not None:
            self.status_panel.warn(conflict.text, conflict.details)

    def show_result(self, request: RestoreRequest, outcome: Outcome) -> None:
        """Add the run's layers over its input and say how it went (plain lines; the numbers under Details)."""
        name = result_name(request.source.name, taken_names([layer.name for layer in self.viewer.layers]))
        outputs = run_outputs(request, outcome, name)
        add_outputs(self.viewer, request, name, outputs)
        added = name if outcome.ensemble is None else f"{name} mean"
        notes = [Note(done_line(added, outcome)), fit_note(outcome.info, is_constant(request.planes.data))]
        if outcome.ensemble is not None:
            self._show_side_by_side()
            notes.append(ensemble_note(request.samples, outcome.ensemble.info))
            held_out = outcome.ensemble.run_info.holdout
            if held_out:
                verdict = held_out["verdict"]
                notes.append(Note(f"{verdict[0].upper()}{verdict[1:]}."))
        if outcome.residual is not None:
            notes.append(Note(f"The residual layer is below it, hidden: '{name} residual'."))
        if outcome.metrics:
            notes.append(Note(f"Against '{request.record['reference']}': {format_metrics(outcome.metrics)}."))
        if outcome.info.get("test_model"):
            notes.append(Note(f"Test model: {outcome.info.get('model')}."))
        unchecked, _ = text_check_notes(outcome.info, request.model.model in RANDOM_TEXT_MODELS)
        if unchecked is not None:
            notes.append(unchecked)
        details = "\n".join(note.details for note in notes if note.details)
        self.status_panel.say("\n".join(note.text for note in notes), details)

    def _show_side_by_side(self) -> None:
        """Grid view, so mean, std and data share are seen side by side, each tile showing its whole map."""
        self.viewer.canvas.grid.enabled = True
        self.viewer.reset_view()

    def warn(self, message: str) -> None:
        """A warning about the run: a line in the status (kept under the summary) and a napari notification."""
        self.status_panel.warn(message)

    def _cancelled(self, request: RestoreRequest | None) -> None:
        """Nothing was added: say why, and select the input again (the preview, now gone, was selected)."""
        self.status_panel.cancelled(self._stop_reason)
        if request is not None and request.source in self.viewer.layers:
            self.viewer.layers.selection.active = request.source

    def _on_errored(self, error: BaseException) -> None:
        remove_preview(self.viewer)
        if isinstance(error, Cancelled):
            self._cancelled(self._state.request)
        else:
            self.status_panel.failed(explain_error(error))

    def _on_finished(self) -> None:
        if self.activity is not None:
            self.activity.close()
            self.activity = None
        self._state.request = None
        self.worker = None
        self._set_running(False)
