"""The "Restore (TReg)" dock widget: a thin Qt shell around :func:`napari_treg.restore`.

Every parameter widget is named after a keyword argument of ``restore`` (``image``,
``operator``, ``prompt``, ``steps``, ``seed``, ``model``, ...), so from the napari
console::

    w = viewer.window.add_plugin_dock_widget("napari-treg", "Restore (TReg)")[1]
    w.prompt.value = "fluorescent cell nuclei"
    w.steps.value = 50
    worker = w.run()

The run happens in a napari thread worker; what it computes lives in :mod:`.job`,
and the layer bookkeeping in :mod:`.layers`.
"""

from __future__ import annotations

import functools
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
from qtpy.QtWidgets import QGroupBox, QSizePolicy, QVBoxLayout
from superqt import QCollapsible

from ..errors import Cancelled, InvalidInputError, TRegError
from .choices import MODELS, PRECISIONS, available_devices, model_spec, sr_factor
from .forms import (
    apply_operator_record,
    checkbox,
    layer_combo,
    operator_from_form,
    operator_settings,
    operator_widgets,
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
#: restore keyword arguments read straight from widgets of the same name
RESTORE_OPTIONS = (
    "prompt", "negative_prompt", "guidance", "adaptive_negation", "negation_lr", "negation_steps",
    "steps", "seed", "dc_every", "dc_until", "cg_iterations", "cg_lambda", "noise", "tile_size", "tile_overlap",
)


def data_consistency_line(info: dict) -> str:
    """How well the result explains the measurement, in words a user can judge."""
    line = f"Data consistency ||Ax - y|| / ||y|| = {info.get('residual', 0.0):.3g}"
    ratio = info.get("residual_over_noise")
    if ratio is not None:
        line += f", {ratio:.2g} x the noise level (about 1 = consistent)"
    return line + "."


def preview_interval(steps: int, previews: int = 20) -> int:
    """Preview every this many steps: about ``previews`` previews per run."""
    return max(1, round(steps / previews))


class _Relay(QObject):
    """Carries progress from the worker thread to callbacks in the main thread.

    The relay lives in the main thread, so its signals, emitted by the worker, are queued.
    """

    stepped = Signal(int, int, object)
    status = Signal(str, object)

    def __init__(self, parent: QObject, on_step: Any, on_status: Any):
        super().__init__(parent)
        self._on_step, self._on_status = on_step, on_status
        self.stepped.connect(self._step)
        self.status.connect(self._status)

    @Slot(int, int, object)
    def _step(self, step: int, total: int, preview: Any) -> None:
        _reporting_errors(self._on_step, step, total, preview)

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
    """Restore an Image layer with TReg: measurement, operator, text, model, output options."""

    def __init__(self, viewer: napari.viewer.Viewer):
        inputs = Container(name="inputs", widgets=[
            layer_combo(viewer, "Image", "image", "image", "The measured (degraded) image to restore", False),
            ComboBox(name="planes", label="planes", value=CURRENT_PLANE, choices=[CURRENT_PLANE, WHOLE_STACK],
                     tooltip="For stacks: restore only the displayed plane, or every plane"),
            *operator_widgets(viewer),
            FloatSpinBox(name="noise", label="noise (sigma)", value=0.01, min=0.0, max=1.0, step=0.005,
                         tooltip="The measurement's noise level, as a fraction of half the intensity range "
                                 "(as in Simulate degradation). Used to judge the result: the residual is "
                                 "reported in units of it. 0 = unknown."),
        ])
        text = Container(name="text", widgets=[
            LineEdit(name="prompt", label="prompt", value="",
                     tooltip="What the image shows, e.g. 'fluorescent cell nuclei, sharp'"),
            LineEdit(name="negative_prompt", label="negative prompt", value="out of focus, depth of field",
                     tooltip="What the result should not look like"),
            FloatSpinBox(name="guidance", label="guidance", value=5.0, min=0.0, max=30.0, step=0.5,
                         tooltip="Text guidance weight (0 = no text)"),
            checkbox("adaptive_negation", "adaptive negation", True,
                     "Optimise the negative prompt against the image content (TReg)"),
            FloatSpinBox(name="negation_lr", label="negation rate", value=8e-4, min=0.0, max=0.1, step=1e-4,
                         tooltip="Learning rate of adaptive negation (1e-3 for SR, 5e-4 for deblurring)"),
            SpinBox(name="steps", label="steps", value=200, min=1, max=1000,
                    tooltip="Sampling steps (200 as in the paper; fewer is faster and rougher)"),
            SpinBox(name="seed", label="seed", value=0, min=0, max=2**31 - 1,
                    tooltip="Seed of the sampler (plane k of a stack uses seed + k)"),
        ])
        output = Container(name="output", widgets=[
            checkbox("preview", "live preview", True, "Show the current estimate while sampling"),
            checkbox("residual_layer", "residual layer |A x - y|", False,
                     "Also add where the result disagrees with the measurement"),
            layer_combo(viewer, "Image", "reference", "reference",
                        "Ground truth (e.g. the image a measurement was simulated from): shows PSNR and SSIM",
                        nullable=True, measurements_last=True),
        ])
        cg_lambda = FloatSpinBox(name="cg_lambda", label="CG lambda", value=1e-4, min=1e-8, max=1.0, step=1e-6,
                                 tooltip="Proximal weight of each data-consistency solve")
        cg_lambda.adaptive_step = True
        advanced = Container(name="advanced", widgets=[
            SpinBox(name="dc_every", label="DC every", value=3, min=0, max=100,
                    tooltip="Data consistency on every n-th step (0 = never)"),
            FloatSpinBox(name="dc_until", label="DC until", value=0.85, min=0.0, max=1.0, step=0.05,
                         tooltip="Fraction of the trajectory with data-consistency steps"),
            SpinBox(name="cg_iterations", label="CG iterations", value=5, min=0, max=100,
                    tooltip="Conjugate-gradient iterations per data-consistency step"),
            cg_lambda,
            SpinBox(name="negation_steps", label="negation steps", value=10, min=0, max=100,
                    tooltip="Adam steps of adaptive negation per data-consistency step"),
            ComboBox(name="model", label="model", value="sd15", choices=list(MODELS),
                     tooltip="Stable Diffusion 1.5 weights, or the tiny test model (no meaningful image)"),
            FileEdit(name="model_path", label="model path", mode="d",
                     tooltip="A diffusers folder or a .safetensors / .ckpt checkpoint"),
            ComboBox(name="device", label="device", value="auto", choices=available_devices(),
                     tooltip="auto: the GPU if there is one, else the CPU"),
            ComboBox(name="dtype", label="precision", value=None, choices=list(PRECISIONS),
                     tooltip="float16 halves GPU memory; float32 is safest on the CPU"),
            checkbox("low_memory", "low-memory mode", False,
                     "VAE tiling, text encoder on the CPU: for GPUs with little memory (use tiles for large images)"),
            SpinBox(name="tile_size", label="tile size", value=0, min=0, max=16384, step=64,
                    tooltip="Restore images larger than this (restored pixels; 512 suits Stable Diffusion 1.5) "
                            "in overlapping tiles blended without seams; 0 = in one piece"),
            SpinBox(name="tile_overlap", label="tile overlap", value=64, min=0, max=1024, step=16,
                    tooltip="Overlap of neighbouring tiles, in restored pixels"),
        ])
        buttons = Container(name="buttons", layout="horizontal", labels=False, widgets=[
            PushButton(name="run_button", text="Run", tooltip="Restore the image (in the background)"),
            PushButton(name="cancel_button", text="Cancel", enabled=False,
                       tooltip="Stop within one step; nothing is added"),
        ])
        progress_bar = ProgressBar(name="progress_bar", value=0, min=0, max=1, label="")
        status = Label(name="status", value="Ready.")
        super().__init__(labels=False, widgets=[inputs, text, output, advanced, buttons, progress_bar, status])
        self.viewer = viewer
        self.worker = None
        self._sections = (inputs, text, output, advanced, buttons)
        self._state = _RunState()
        self._progress: RunProgress | None = None
        self._relay = _Relay(self.native, self._on_step, self._on_status)
        self._frame_sections()
        progress_bar.native.setFormat("%v / %m steps")
        advanced.tile_size.native.setSpecialValueText("off (one piece)")
        progress_bar.visible = False  # shown from the first run on
        status.native.setWordWrap(True)
        status.native.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

        buttons.run_button.changed.connect(self.run)
        buttons.cancel_button.changed.connect(self.cancel)
        inputs.operator.changed.connect(self._update_visibility)
        inputs.image.changed.connect(self._image_changed)
        for name in ("model", "model_path", "device", "dtype", "low_memory"):
            advanced[name].changed.connect(self._model_changed)
        for event in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self.reset_choices)
        # free the model when the widget goes: its dock closed (it is then un-parented) or deleted
        shutdown = functools.partial(_shutdown, self._state)
        self._close_watcher = _CloseWatcher(self.native, shutdown)
        self.native.destroyed.connect(shutdown)
        self._image_changed()

    def _frame_sections(self) -> None:
        """Titled boxes around the sections, and a collapsible box for the advanced settings."""
        layout = self.native.layout()
        titles = {"inputs": "Measurement", "text": "Text guidance and sampling", "output": "Output"}
        for section in self._sections[:4]:
            index = layout.indexOf(section.native)
            section.margins = (0, 0, 0, 0)
            if section.name == "advanced":
                frame = self.advanced_frame = QCollapsible("Advanced: schedule, model, device")
                frame.addWidget(section.native)
            else:
                frame = QGroupBox(titles[section.name])
                QVBoxLayout(frame).addWidget(section.native)
                frame.layout().setContentsMargins(4, 4, 4, 4)
            layout.insertWidget(index, frame)

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

    def _image_changed(self, *_: Any) -> None:
        """A measurement made by "Simulate degradation" brings its operator and its clean reference."""
        layer = self.image.value
        record = {} if layer is None else layer.metadata.get("treg_simulation", {})
        if "operator" in record:
            apply_operator_record(self.inputs, record["operator"], self.viewer.layers)
        source = record.get("source_layer")
        if source in self.viewer.layers and self.reference.value is None:
            self.reference.reset_choices()
            self.reference.value = self.viewer.layers[source]
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
            show_error(explain_error(error))
            return None
        self._state.job = job
        self._set_running(True)
        self._progress = RunProgress(total=0, desc="TReg: loading model", cancel_callback=self.cancel)
        self._on_status(f"loading model {job.model}", None)
        worker = create_worker(
            functools.partial(
                run_job, job, self._state.holder,
                progress=self._relay.stepped.emit, status=self._relay.status.emit,
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
        if self.operator.value == "inpainting" and self.mask.value is not None:
            mask = mask_for_planes(self.mask.value.data, planes, np.shape(layer.data), layer.rgb)
        operator = operator_from_form(self.inputs, mask=mask)
        plane_hw = np.shape(planes.data)[-3:-1] if layer.rgb else np.shape(planes.data)[-2:]
        operator.check_image_hw(operator.image_hw(tuple(plane_hw)))  # e.g. a mask of another size
        options = {name: getattr(self, name).value for name in RESTORE_OPTIONS}
        options["tile_size"] = options["tile_size"] or None  # 0 = one piece
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

    def _on_step(self, step: int, total: int, preview: np.ndarray | None) -> None:
        job = self._state.job
        if job is None or job.cancel.is_set():
            return
        bar = self.progress_bar.native
        bar.setFormat("%v / %m steps")
        bar.setRange(0, total)
        bar.setValue(step)
        steps = job.options["steps"]
        planes = total // steps
        where = f" (plane {(step - 1) // steps + 1} of {planes})" if planes > 1 else ""
        self.status.value = f"Step {step} of {total}{where}"
        if preview is not None and self.preview.value:
            self._show_preview(job, preview)
        # napari's progress may process pending events (later steps, even the end of the run): do it last
        progress = self._progress
        if progress is not None and self._state.job is job:
            if progress.total != total:
                progress.total = total
                progress.set_description("TReg: restoring")
            progress.update(step - progress.n)

    def _show_preview(self, job: Job, preview: np.ndarray) -> None:
        layer = job.source
        if self._state.job is not job:
            return
        scale, translate = restored_geometry(layer.scale, layer.translate, sr_factor(job.operator))
        limits = list(layer.contrast_limits) if job.rgb else list(percentile_limits(preview))
        existing = self._preview_layer()
        if existing is None:
            self.viewer.add_image(
                preview, name=PREVIEW_NAME, rgb=job.rgb, scale=scale[-2:], translate=translate[-2:],
                units=layer.units[-2:], axis_labels=layer.axis_labels[-2:],
                colormap=None if job.rgb else layer.colormap, contrast_limits=limits,
                metadata={"treg_preview": True},
            )
        else:
            existing.data = preview
            existing.contrast_limits = limits

    def _preview_layer(self) -> Image | None:
        for layer in self.viewer.layers:
            if layer.metadata.get("treg_preview"):
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
            show_warning(message)
        self.status.value = summary

    def _add_result(self, job: Job, outcome: Outcome) -> str:
        layer = job.source
        name = result_name(layer.name, job.options["prompt"])
        metadata = restore_metadata(
            input_name=layer.name,
            operator=job.record["operator"],
            settings={
                **job.options, "model": job.model, "device": job.device, "dtype": job.dtype,
                "preview_every": job.preview_every, "reference": job.record["reference"],
            },
            info=outcome.info,
            planes=job.planes,
            metrics=outcome.metrics,
        )
        scale, translate = restored_geometry(layer.scale, layer.translate, sr_factor(job.operator), job.planes.index)
        colormap = "gray" if job.rgb else layer.colormap
        self.viewer.add_image(
            place_plane(outcome.result, job.planes), name=name, scale=scale, translate=translate,
            metadata={"treg": metadata}, units=layer.units, axis_labels=layer.axis_labels,
            **display_kwargs(outcome.result, job.rgb, colormap, layer.contrast_limits),
        )
        if outcome.residual is not None:
            r_scale, r_translate = restored_geometry(layer.scale, layer.translate, 1, job.planes.index)
            self.viewer.add_image(
                place_plane(outcome.residual, job.planes), name=f"{layer.name} (TReg residual)", rgb=job.rgb,
                scale=r_scale, translate=r_translate, colormap=None if job.rgb else "magma",
                units=layer.units, axis_labels=layer.axis_labels,
                contrast_limits=list(percentile_limits(outcome.residual, 0.0, 99.5)),
                metadata={"treg_residual": {"result": name, "residual": outcome.info.get("residual")}},
            )
        lines = [f"Done in {outcome.info.get('seconds', 0.0):.1f} s: added '{name}'.",
                 data_consistency_line(outcome.info)]
        if outcome.metrics:
            lines.append(f"Against '{job.record['reference']}': {format_metrics(outcome.metrics)}.")
        if outcome.info.get("test_model"):
            lines.append(f"Test model: {outcome.info.get('model')}.")
        return "\n".join(lines)

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
