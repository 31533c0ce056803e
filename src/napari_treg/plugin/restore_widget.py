"""The "Restore (TReg)" dock widget: a thin Qt shell around :func:`napari_treg.restore`.

Every parameter widget is named after a keyword argument of ``restore`` (``image``,
``operator``, ``prompt``, ``steps``, ``seed``, ``model``, ...), so from the napari
console::

    w = viewer.window.add_plugin_dock_widget("napari-treg", "Restore (TReg)")[1]
    w.prompt.value = "fluorescent cell nuclei"
    w.steps.value = 50
    worker = w.run()

The method's fields come from :class:`napari_treg.solver.TRegConfig` and the operator's
from the operator registry (:mod:`.forms`). The run happens in a napari thread worker;
what it computes lives in :mod:`.job`, and the layer bookkeeping in :mod:`.layers`.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils import cancelable_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, Signal, Slot
from qtpy.QtWidgets import QFrame, QGroupBox, QScrollArea, QSizePolicy, QVBoxLayout, QWidget
from superqt import QCollapsible

from ..api import restore
from ..engine import DEFAULT_SCHEDULE, Progress
from ..errors import Cancelled, InvalidInputError, TRegError
from ..settings import specs
from ..solver import TRegConfig, schedule_settings
from .choices import MODELS, PRECISIONS, available_devices, model_spec, sr_factor
from .forms import (
    DEFAULT_OPERATOR,
    PREVIEW_KEY,
    apply_operator_record,
    checkbox,
    is_result,
    layer_combo,
    narrow,
    operator_from_form,
    operator_parameters,
    operator_settings,
    operator_widgets,
    reset_operator,
    setting_widget,
    show_operator,
)
from .job import Job, ModelHolder, Outcome, explain_error, run_job
from .layers import (
    CURRENT_PLANE,
    WHOLE_STACK,
    current_plane_index,
    display_kwargs,
    format_metrics,
    leading_shape,
    linear_part,
    mask_for_planes,
    percentile_limits,
    place_plane,
    restore_metadata,
    restored_geometry,
    result_name,
    select_planes,
)

if TYPE_CHECKING:
    import napari

PREVIEW_NAME = "TReg preview"
CANCELLED = "Cancelled: nothing was added."
#: the widget starts from the measurement-faithful schedule: on the analytic prior it keeps the residual at
#: the noise level where the paper's leaves it 4-20x above, and the prompt still picks its class
#: (docs/validation.md, "Measurement fidelity"); restore() and the CLI keep the paper's
WIDGET_SCHEDULE = DEFAULT_SCHEDULE  # the one default of every front end (engine.DEFAULT_SCHEDULE)
#: the method settings shown with the text; the others are under Advanced
MAIN_SETTINGS = ("guidance", "steps")
#: restore keyword arguments read straight from widgets of the same name
RESTORE_OPTIONS = (
    "prompt",
    "negative_prompt",
    "seed",
    "noise",
    "tile_size",
    "tile_overlap",
    *(spec.name for spec in specs(TRegConfig)),
)
#: restore's own defaults (seed, tile overlap, model, device), not repeated here
DEFAULTS = {name: parameter.default for name, parameter in inspect.signature(restore).parameters.items()}
#: the dock's width limit: it must leave room for the canvas on a 1366 px laptop screen
DOCK_WIDTH = 400


def data_consistency_line(info: dict, constant: bool = False) -> str:
    """How well the result explains the measurement, in words a user can judge.

    For a ``constant`` measurement ``||A x - y|| / ||y||`` means nothing (the engine works on
    the image minus its level, which is then zero): only the residual in noise units is given.
    """
    ratio = info.get("residual_over_noise")
    if constant:
        line = "The measurement is constant: there is no structure to restore"
        if ratio is not None:
            line += f"; the result differs from it by {ratio:.2g} x the noise level (RMS)"
        return line + "."
    line = f"Data consistency ||Ax - y|| / ||y|| = {info.get('residual', 0.0):.3g}"
    if ratio is not None:
        line += f", {ratio:.2g} x the noise level (about 1 = consistent)"
    return line + "."


def done_line(name: str, outcome: Outcome) -> str:
    """``Done in 8.6 s (+ 25.1 s loading the model): added 'x'.``"""
    loading = f" (+ {outcome.load_seconds:.1f} s loading the model)" if outcome.load_seconds >= 0.05 else ""
    return f"Done in {outcome.info.get('seconds', 0.0):.1f} s{loading}: added '{name}'."


def preview_interval(steps: int, previews: int = 20) -> int:
    """Preview every this many steps: about ``previews`` previews per run."""
    return max(1, round(steps / previews))


class _Relay(QObject):
    """Carries progress from the worker thread to callbacks in the main thread.

    The relay lives in the main thread, so its signals, emitted by the worker, are queued.
    """

    stepped = Signal(object)
    status = Signal(str, object)

    def __init__(self, parent: QObject, on_step: Any, on_status: Any):
        super().__init__(parent)
        self._on_step, self._on_status = on_step, on_status
        self.stepped.connect(self._step)
        self.status.connect(self._status)

    @Slot(object)
    def _step(self, event: Any) -> None:
        _reporting_errors(self._on_step, event)

    @Slot(str, object)
    def _status(self, message: str, fraction: Any) -> None:
        _reporting_errors(self._on_status, message, fraction)


class RunProgress(cancelable_progress):
    """napari's progress for a run: its Cancel (activity dock) stops the run at once.

    ``cancelable_progress`` only calls its ``cancel_callback`` while it is iterated; a run
    reports its steps by hand, so the callback is called here, when the user cancels.
    """

    def cancel(self) -> None:
        super().cancel()
        if self.cancel_callback is not None:
            self.cancel_callback()


class _CloseWatcher(QObject):
    """Calls ``on_close`` when the widget is taken out of its dock (napari's close button does that)."""

    def __init__(self, watched: QObject, on_close: Any):
        super().__init__(watched)
        self._on_close = on_close
        watched.installEventFilter(self)

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.ParentChange and watched.parent() is None:
            self._on_close()
        return False


def _reporting_errors(callback: Any, *args: Any) -> None:
    """Run a progress callback; a failure to display progress is a notification, not a crash."""
    try:
        callback(*args)
    except Exception as error:  # noqa: BLE001 - an exception escaping a Qt slot can abort the app
        show_warning(f"TReg could not show its progress: {type(error).__name__}: {error}")


class RestoreWidget(Container):
    """Restore an Image layer with TReg: measurement, operator, model, text, output options."""

    def __init__(self, viewer: napari.viewer.Viewer):
        settings = {spec.name: setting_widget(spec) for spec in specs(TRegConfig)}
        for name, value in schedule_settings(WIDGET_SCHEDULE).items():
            settings[name].value = value
        inputs = Container(
            name="inputs",
            widgets=[
                layer_combo(viewer, "Image", "image", "image", "The measured (degraded) image to restore", False),
                ComboBox(
                    name="planes",
                    label="planes",
                    value=CURRENT_PLANE,
                    choices=[CURRENT_PLANE, WHOLE_STACK],
                    tooltip="For stacks: restore only the displayed plane, or every plane",
                ),
                *operator_widgets(viewer),
                FloatSpinBox(
                    name="noise",
                    label="noise σ",
                    value=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.005,
                    tooltip="The measurement's noise level, as a fraction of half the intensity range "
                    "(as in Simulate degradation; taken from the layer when it records it). "
                    "Used to judge the result: the residual is reported in units of it. 0 = unknown.",
                ),
            ],
        )
        model = Container(
            name="model_section",
            widgets=[
                ComboBox(
                    name="model",
                    label="model",
                    value=DEFAULTS["model"],
                    choices=list(MODELS),
                    tooltip="Stable Diffusion 1.5 weights, or a test model (no meaningful photograph)",
                ),
                FileEdit(
                    name="model_path",
                    label="path",
                    mode="d",
                    tooltip="A diffusers folder or a .safetensors / .ckpt checkpoint",
                ),
            ],
        )
        text = Container(
            name="text",
            widgets=[
                LineEdit(
                    name="prompt",
                    label="prompt",
                    value="",
                    tooltip="What the image shows, e.g. 'fluorescent cell nuclei, sharp'",
                ),
                LineEdit(
                    name="negative_prompt",
                    label="negative",
                    value="out of focus, depth of field",
                    tooltip="Negative prompt: what the result should not look like",
                ),
                *(settings.pop(name) for name in MAIN_SETTINGS),
                SpinBox(
                    name="seed",
                    label="seed",
                    value=DEFAULTS["seed"],
                    min=0,
                    max=2**31 - 1,
                    tooltip="Seed of the sampler (plane k of a stack uses seed + k)",
                ),
            ],
        )
        output = Container(
            name="output",
            widgets=[
                checkbox("preview", "live preview", True, "Show the current estimate while sampling"),
                checkbox(
                    "residual_layer",
                    "residual layer |A x - y|",
                    False,
                    "Also add where the result disagrees with the measurement (hidden, below the result)",
                ),
                layer_combo(
                    viewer,
                    "Image",
                    "reference",
                    "reference",
                    "Ground truth (e.g. the image a measurement was simulated from): shows PSNR and SSIM",
                    nullable=True,
                    measurements_last=True,
                ),
            ],
        )
        tile_size = FloatSpinBox(
            name="tile_size",
            label="tile size",
            value=0,
            min=0,
            max=16384,
            step=64,
            tooltip="Restore images larger than this (restored pixels; 512 suits Stable "
            "Diffusion 1.5) in overlapping tiles blended without seams; "
            "off = in one piece",
        )
        advanced = Container(
            name="advanced",
            widgets=[
                *settings.values(),
                ComboBox(
                    name="device",
                    label="device",
                    value=DEFAULTS["device"],
                    choices=available_devices(),
                    tooltip="auto: the GPU if there is one, else the CPU",
                ),
                ComboBox(
                    name="dtype",
                    label="precision",
                    value=None,
                    choices=list(PRECISIONS),
                    tooltip="float16 halves GPU memory; float32 is safest on the CPU",
                ),
                checkbox(
                    "low_memory",
                    "low-memory mode",
                    False,
                    "VAE tiling, text encoder on the CPU: for GPUs with little memory (use tiles for large images)",
                ),
                tile_size,
                SpinBox(
                    name="tile_overlap",
                    label="tile overlap",
                    value=DEFAULTS["tile_overlap"],
                    min=0,
                    max=1024,
                    step=16,
                    tooltip="Overlap of neighbouring tiles, in restored pixels",
                ),
            ],
        )
        buttons = Container(
            name="buttons",
            layout="horizontal",
            labels=False,
            widgets=[
                PushButton(name="run_button", text="Run", tooltip="Restore the image (in the background)"),
                PushButton(
                    name="cancel_button", text="Cancel", enabled=False, tooltip="Stop within one step; nothing is added"
                ),
            ],
        )
        progress_bar = ProgressBar(name="progress_bar", value=0, min=0, max=1, label="")
        status = Label(name="status", value="Ready.")
        sections = (inputs, model, text, output, advanced)
        super().__init__(labels=False, widgets=[*sections, buttons, progress_bar, status])
        self.viewer = viewer
        self.worker = None
        self._sections = (*sections, buttons)
        self._state = _RunState()
        self._progress: RunProgress | None = None
        self._updating_progress = False
        self._relay = _Relay(self.native, self._on_step, self._on_status)
        self._settings_from: str | None = None  # the layer whose record set the operator, if any
        self._frame_sections(sections)
        progress_bar.native.setFormat("%v / %m steps")
        tile_size.native.setDecimals(0)
        tile_size.native.setSpecialValueText("off")
        for combo in (model.model, advanced.device, advanced.dtype):
            narrow(combo)
        progress_bar.visible = False  # shown from the first run on
        status.native.setWordWrap(True)
        status.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

        buttons.run_button.changed.connect(self.run)
        buttons.cancel_button.changed.connect(self.cancel)
        inputs.operator.changed.connect(self._update_visibility)
        inputs.image.changed.connect(self._image_changed)
        for widget in (model.model, model.model_path, advanced.device, advanced.dtype, advanced.low_memory):
            widget.changed.connect(self._model_changed)
        viewer.layers.events.inserted.connect(self._layer_inserted)
        for event in ("removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self.reset_choices)
        # stop a run and free the model when the widget goes: its dock closed (it is then un-parented) or deleted
        shutdown = functools.partial(_shutdown, self._state)
        self._close_watcher = _CloseWatcher(self.native, shutdown)
        self.native.destroyed.connect(shutdown)
        self._prefer_visible_measurement()
        self._image_changed()

    def _frame_sections(self, sections: tuple[Container, ...]) -> None:
        """Titled boxes around the sections, in a scroll area; a collapsible box for the advanced settings.

        Run, Cancel, the progress bar and the status line stay below the scroll area, always visible.
        """
        titles = {
            "inputs": "Measurement",
            "model_section": "Model",
            "text": "Text guidance and sampling",
            "output": "Output",
        }
        content = QWidget()
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 0, 0, 0)
        for section in sections:
            section.margins = (0, 0, 0, 0)
            if section.name == "advanced":
                frame = self.advanced_frame = QCollapsible("Advanced: method, device, tiles")
                frame.addWidget(section.native)
            else:
                frame = QGroupBox(titles[section.name])
                QVBoxLayout(frame).addWidget(section.native)
                frame.layout().setContentsMargins(4, 4, 4, 4)
            column.addWidget(frame)
        column.addStretch(1)
        scroll = self.scroll_area = QScrollArea()
        scroll.setWidget(content)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(_scroll_bar_policy("ScrollBarAlwaysOff"))
        scroll.setMinimumWidth(min(content.minimumSizeHint().width() + 16, DOCK_WIDTH))
        scroll.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.native.layout().insertWidget(0, scroll, 1)
        self.native.setMaximumWidth(DOCK_WIDTH)

    def reset_choices(self, *_: Any) -> None:
        for section in self._sections:
            section.reset_choices()

    # -- scripting: widget.prompt, widget.steps, ... ----------------------------------------

    def __getattr__(self, name: str) -> Any:
        for section in self.__dict__.get("_sections", ()):
            widget = section.get_widget(name)
            if widget is not None:
                return widget
        return super().__getattr__(name)

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    # -- visibility --------------------------------------------------------------------------

    def _update_visibility(self, *_: Any) -> None:
        show_operator(self.inputs)
        layer = self.image.value
        self.planes.visible = layer is not None and len(leading_shape(np.shape(layer.data), layer.rgb)) > 0
        choice = self.model.value
        self.model_path.visible = choice in ("folder", "checkpoint")
        self.model_path.mode = "d" if choice == "folder" else "r"

    # -- settings that follow the chosen layer ----------------------------------------------------

    def _layer_inserted(self, event: Any) -> None:
        """New layers are offered; a new visible measurement replaces a hidden or derived choice."""
        self.reset_choices()
        layer = event.value
        current = self.image.value
        if (
            isinstance(layer, Image)
            and layer.visible
            and not is_result(layer)
            and (current is None or not current.visible or is_result(current))
            and not self.is_running
        ):
            self.image.value = layer

    def _prefer_visible_measurement(self) -> None:
        """At start: the top visible layer that is not a TReg result (the choices are ranked that way)."""
        self.image.reset_choices()
        choices = [layer for layer in self.image.choices if layer is not None]
        if choices and self.image.value is not choices[0]:
            self.image.value = choices[0]

    def _image_changed(self, *_: Any) -> None:
        """Every setting that belongs to a layer follows the new image, or is cleared.

        A measurement made by "Simulate degradation" (or a sample) brings its operator and
        parameters, its noise level, its mask or PSF and its clean reference. Any other layer
        clears the reference, mask, PSF and noise level, and the operator set from another
        layer's record goes back to its defaults.
        """
        layer = self.image.value
        record = {} if layer is None else dict(layer.metadata.get("treg_simulation", {}))
        layers = self.viewer.layers
        if "operator" in record:
            apply_operator_record(self.inputs, record["operator"], layers)
            self._settings_from = layer.name
        elif self._settings_from is not None:  # set by another layer's record: back to the defaults
            self.operator.value = DEFAULT_OPERATOR
            reset_operator(self.inputs)
            self._settings_from = None
        else:
            for name, param in operator_parameters().items():
                if param.is_image:
                    self.inputs[name].value = None
        self.noise.value = float(record.get("noise") or 0.0)
        source = record.get("source_layer")
        self.reference.reset_choices()
        self.reference.value = layers[source] if source in layers else None
        self._update_visibility()

    def _model_changed(self, *_: Any) -> None:
        self._update_visibility()
        self._state.holder.release()

    # -- running -------------------------------------------------------------------------------

    def run(self, *_: Any):
        """Start restoring in a thread worker; returns the worker (None if nothing started)."""
        if self.is_running:
            show_info("A restoration is already running: wait for it or press Cancel.")
            return None
        try:
            job = self.make_job()
        except (TRegError, ValueError) as error:
            message = explain_error(error)
            self.status.value = message
            show_error(message)
            return None
        self._state.job = job
        self._set_running(True)
        self._progress = RunProgress(total=0, desc="TReg: loading model", cancel_callback=self.cancel)
        self._on_status(f"loading model {job.model}", None)
        worker = create_worker(
            functools.partial(
                run_job,
                job,
                self._state.holder,
                progress=self._relay.stepped.emit,
                status=self._relay.status.emit,
            ),
            _start_thread=False,
            _connect={"returned": self._on_returned, "errored": self._on_errored, "finished": self._on_finished},
        )
        self.worker = worker
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Stop the running restoration within one step; the preview is removed and nothing is added."""
        job = self._state.job
        if job is not None:
            job.cancel.set()
            self.cancel_button.enabled = False
            self.status.value = "Cancelling…"

    def make_job(self) -> Job:
        """Read the widgets into a :class:`Job` (main thread; raises InvalidInputError on bad input)."""
        layer = self.image.value
        if layer is None:
            raise InvalidInputError("choose the image to restore: add an Image layer and select it under 'image'")
        if getattr(layer, "multiscale", False):
            raise InvalidInputError("multiscale images are not supported: open the full-resolution level only")
        planes = select_planes(layer.data, layer.rgb, self.planes.value, self._plane_index(layer))
        mask = None
        if self.mask.visible and self.mask.value is not None:
            mask = mask_for_planes(self.mask.value.data, planes, np.shape(layer.data), layer.rgb)
        operator = operator_from_form(self.inputs, mask=mask)
        plane_hw = np.shape(planes.data)[-3:-1] if layer.rgb else np.shape(planes.data)[-2:]
        operator.check_image_hw(operator.image_hw(tuple(plane_hw)))  # e.g. a mask of another size
        options = {name: getattr(self, name).value for name in RESTORE_OPTIONS}
        options["tile_size"] = int(options["tile_size"]) or None  # off = one piece
        reference = self.reference.value
        return Job(
            planes=planes,
            operator=operator,
            rgb=bool(layer.rgb),
            model=model_spec(self.model.value, str(self.model_path.value)),
            device=self.device.value,
            dtype=self.dtype.value,
            options=options,
            low_memory=self.low_memory.value,
            preview_every=preview_interval(options["steps"]) if self.preview.value else 0,
            residual=self.residual_layer.value,
            reference=None if reference is None else np.asarray(reference.data),
            source=layer,
            record={
                "operator": {"name": self.operator.value, **operator_settings(self.inputs)},
                "reference": getattr(reference, "name", None),
            },
        )

    def _plane_index(self, layer: Image) -> tuple[int, ...]:
        position = layer.world_to_data(self.viewer.dims.point)
        return current_plane_index(position, np.shape(layer.data), layer.rgb)

    def _set_running(self, running: bool) -> None:
        self.run_button.enabled = not running
        self.cancel_button.enabled = running
        if running:
            self.progress_bar.visible = True

    # -- worker callbacks (main thread) ----------------------------------------------------------

    def _on_status(self, message: str, fraction: float | None) -> None:
        if self._state.job is None:
            return
        self.status.value = message[:1].upper() + message[1:] + "…"
        bar = self.progress_bar.native
        if fraction is None:
            bar.setRange(0, 0)  # busy indicator
        else:
            bar.setRange(0, 100)
            bar.setFormat("%p%")
            bar.setValue(int(100 * fraction))

    def _on_step(self, event: Progress) -> None:
        job = self._state.job
        if job is None or job.cancel.is_set():
            return
        step, total = event.step, event.total
        bar = self.progress_bar.native
        bar.setFormat("%v / %m steps")
        bar.setRange(0, total)
        bar.setValue(step)
        where = [f"plane {event.plane} of {event.planes}"] if event.planes > 1 else []
        where += [f"tile {event.tile} of {event.tiles}"] if event.tiles > 1 else []
        self.status.value = f"Step {step} of {total}" + (f" ({', '.join(where)})" if where else "")
        if event.preview is not None and self.preview.value:
            self._show_preview(job, event.preview)
        self._update_progress(job, step, total)

    def _update_progress(self, job: Job, step: int, total: int) -> None:
        """Bring napari's progress (the activity dock) to ``step``.

        napari's progress bar processes pending events when it changes, so later steps (even
        the end of the run) are handled inside this call: those skip the update (the outer
        call is still making it), so fast runs do not nest one call per step.
        """
        progress = self._progress
        if progress is None or self._state.job is not job or self._updating_progress:
            return
        self._updating_progress = True
        try:
            if progress.total != total:
                progress.total = total
                progress.set_description("TReg: restoring")
            progress.update(step - progress.n)
        finally:
            self._updating_progress = False

    def _show_preview(self, job: Job, preview: np.ndarray) -> None:
        layer = job.source
        if self._state.job is not job:
            return
        limits = list(layer.contrast_limits) if job.rgb else list(percentile_limits(preview))
        existing = self._preview_layer()
        if existing is not None:
            existing.data = preview
            existing.contrast_limits = limits
            return
        scale, translate = restored_geometry(layer.scale, layer.translate, sr_factor(job.operator))
        kwargs = {}
        if layer.ndim == 2:  # a plane of a stack has no rotation of its own
            kwargs = {"rotate": layer.rotate, "shear": layer.shear, "affine": layer.affine.affine_matrix}
            scale, translate = restored_geometry(
                layer.scale, layer.translate, sr_factor(job.operator), linear=linear_part(layer.rotate, layer.shear, 2)
            )
        self.viewer.add_image(
            preview,
            name=PREVIEW_NAME,
            rgb=job.rgb,
            scale=scale[-2:],
            translate=translate[-2:],
            units=layer.units[-2:],
            axis_labels=layer.axis_labels[-2:],
            colormap=None if job.rgb else layer.colormap,
            contrast_limits=limits,
            metadata={PREVIEW_KEY: True},
            **kwargs,
        )

    def _preview_layer(self) -> Image | None:
        for layer in self.viewer.layers:
            if layer.metadata.get(PREVIEW_KEY):
                return layer
        return None

    def _remove_preview(self) -> None:
        layer = self._preview_layer()
        if layer is not None:
            self.viewer.layers.remove(layer)

    def _on_returned(self, outcome: Outcome) -> None:
        job = self._state.job
        self._remove_preview()
        if job is None:
            return
        if job.cancel.is_set():  # cancelled after the last step: still nothing is added
            self.status.value = CANCELLED
            return
        try:
            summary = self._add_result(job, outcome)
        except Exception as error:  # noqa: BLE001 - a display problem must not leave the widget stuck
            show_error(f"The result could not be shown: {error}")
            return
        for message in outcome.warnings:
            show_warning(f"TReg: {message}")
        self.status.value = summary

    def _add_result(self, job: Job, outcome: Outcome) -> str:
        layer = job.source
        taken = {existing.name for existing in self.viewer.layers}
        name = result_name(layer.name, taken)
        metadata = restore_metadata(
            input_name=layer.name,
            operator=job.record["operator"],
            settings={
                **job.options,
                "model": job.model,
                "device": job.device,
                "dtype": job.dtype,
                "preview_every": job.preview_every,
                "reference": job.record["reference"],
            },
            info=outcome.info,
            planes=job.planes,
            metrics=outcome.metrics,
        )
        metadata["load_seconds"] = round(outcome.load_seconds, 3)
        linear = linear_part(layer.rotate, layer.shear, layer.ndim)
        geometry = {
            "units": layer.units,
            "axis_labels": layer.axis_labels,
            "rotate": layer.rotate,
            "shear": layer.shear,
            "affine": layer.affine.affine_matrix,
        }
        scale, translate = restored_geometry(
            layer.scale, layer.translate, sr_factor(job.operator), job.planes.index, linear
        )
        colormap = "gray" if job.rgb else layer.colormap
        result = Image(
            place_plane(outcome.result, job.planes),
            name=name,
            scale=scale,
            translate=translate,
            metadata={"treg": metadata},
            **geometry,
            **{"rgb": job.rgb, **display_kwargs(outcome.result, job.rgb, colormap, layer.contrast_limits)},
        )
        self.viewer.layers.append(result)
        lines = [done_line(name, outcome), data_consistency_line(outcome.info, _is_constant(job.planes.data))]
        if outcome.residual is not None:
            self._add_residual(job, outcome, result, geometry, linear)
            lines.append(f"The residual layer is below it, hidden: '{name} residual'.")
        self.viewer.layers.selection.active = result
        if outcome.metrics:
            lines.append(f"Against '{job.record['reference']}': {format_metrics(outcome.metrics)}.")
        if outcome.info.get("test_model"):
            lines.append(f"Test model: {outcome.info.get('model')}.")
        return "\n".join(lines)

    def _add_residual(self, job: Job, outcome: Outcome, result: Image, geometry: dict, linear: np.ndarray) -> None:
        """``|A x - y|`` on the measurement's grid, hidden, just below the result."""
        layer = job.source
        scale, translate = restored_geometry(layer.scale, layer.translate, 1, job.planes.index, linear)
        residual = Image(
            place_plane(outcome.residual, job.planes),
            name=f"{result.name} residual",
            rgb=job.rgb,
            scale=scale,
            translate=translate,
            colormap=None if job.rgb else "magma",
            visible=False,
            contrast_limits=list(percentile_limits(outcome.residual, 0.0, 99.5)),
            **geometry,
            metadata={"treg_residual": {"result": result.name, "residual": outcome.info.get("residual")}},
        )
        self.viewer.layers.insert(self.viewer.layers.index(result), residual)

    def _on_errored(self, error: BaseException) -> None:
        self._remove_preview()
        if isinstance(error, Cancelled):
            self.status.value = CANCELLED
            return
        self.status.value = "Failed: see the notification."
        show_error(explain_error(error))

    def _on_finished(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self._state.job = None
        self.worker = None
        self._set_running(False)


def _is_constant(data: np.ndarray) -> bool:
    values = np.asarray(data)
    return values.size > 0 and bool(np.all(values == values.flat[0]))


def _scroll_bar_policy(name: str) -> Any:
    from qtpy.QtCore import Qt

    return getattr(Qt.ScrollBarPolicy, name)


class _RunState:
    """What outlives the widget's Python object: the model and the running job."""

    def __init__(self) -> None:
        self.holder = ModelHolder()
        self.job: Job | None = None


def _shutdown(state: _RunState, *_: Any) -> None:
    """The widget is gone: stop a running job, and free the model (after that job, if any)."""
    if state.job is not None:
        state.job.cancel.set()
    state.holder.release()
