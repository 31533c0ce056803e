"""Send the current Image layer (or a folder of images) to a dask cluster; the result opens lazily.

The layer's data (a NumPy, dask or zarr array) goes to :func:`napari_treg.batch.restore_many`
as it is: nothing is loaded here. A zarr output is added as a layer as soon as it exists
and refreshed as units complete; a folder output is reported when done. Cancel stops
the run; the output stays resumable (run again with the same settings). The run reports its
start and each unit through the plugin's one worker -> GUI relay (:class:`.worker.Relay`), and
shows napari's progress, as the restore widget does.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info

from napari_treg.errors import Cancelled, TRegError
from napari_treg.plugin.forms import layer_combo, operator_from_form, operator_widgets, show_operator
from napari_treg.plugin.layers import restored_geometry
from napari_treg.plugin.messages import explain_error, headline
from napari_treg.plugin.worker import ActivityProgress, Relay, start_worker

if TYPE_CHECKING:
    import napari

SOURCES = ("layer", "folder")


def layer_array(layer: Any) -> Any:
    """The full-resolution data of an Image layer, unloaded (the first level of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def batch_settings(model: str, steps: int, seed: int, prompt: str, tile_size: int, rgb: bool | None) -> dict:
    """``restore`` keywords from the form (tile size 0: one piece)."""
    return {
        "model": model.strip() or "sd15",
        "steps": int(steps),
        "seed": int(seed),
        "prompt": prompt,
        "tile_size": int(tile_size) or None,
        "rgb": rgb,
    }


def cluster_options(scheduler: str, workers: int) -> dict:
    """``scheduler`` (blank: a local cluster) and ``workers`` (0: automatic) for ``restore_many``."""
    return {"scheduler": scheduler.strip() or None, "workers": int(workers) or None}


class BatchWidget(Container):
    """Restore a stack layer or a folder on a local or remote dask cluster, with progress and cancel."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(
            widgets=[
                ComboBox(
                    name="source",
                    label="source",
                    choices=SOURCES,
                    value="layer",
                    tooltip="the selected Image layer (a stack: one unit per plane) or a folder of image files",
                ),
                layer_combo(viewer, "Image", "image", "image", "The measurement stack", True, measurements_last=False),
                FileEdit(name="folder", label="folder", mode="d", tooltip="a folder of .tif/.png/.npy files"),
                *operator_widgets(viewer, operator="super_resolution"),
                LineEdit(name="model", label="model", value="sd15", tooltip="sd15, analytic, tiny, a hub id or a path"),
                LineEdit(name="prompt", label="prompt", value="", tooltip="what the images show"),
                SpinBox(name="steps", label="steps", value=200, min=1, max=1000),
                SpinBox(name="seed", label="seed", value=0, min=0, max=2**31 - 1, tooltip="plane k uses seed + k"),
                SpinBox(
                    name="tile_size",
                    label="tile size",
                    value=0,
                    min=0,
                    max=8192,
                    step=64,
                    tooltip="restore planes larger than this in seam-free tiles; 0: one piece",
                ),
                FileEdit(
                    name="output",
                    label="output",
                    mode="w",
                    tooltip="a .zarr path for a layer, a folder for a folder; an existing one resumes",
                ),
                LineEdit(
                    name="scheduler",
                    label="scheduler",
                    value="",
                    tooltip="address of a running dask scheduler (tcp://host:8786); blank: a local cluster",
                ),
                SpinBox(
                    name="workers",
                    label="workers",
                    value=0,
                    min=0,
                    max=256,
                    tooltip="workers of the local cluster; 0: one per GPU, else one per CPU core",
                ),
            ]
        )
        self.run_button = PushButton(text="Run on cluster")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        self._actions = Container(labels=False, widgets=[self.run_button, self.cancel_button, self.status])
        self.native.layout().addWidget(self._actions.native)
        self.viewer = viewer
        self.worker: Any = None
        self.report: Any = None
        self.result_layer = None
        self._cancel = threading.Event()
        self.activity: ActivityProgress | None = None  # the run's bar in napari's activity dock
        self._target: tuple[str, Any, int] = ("", None, 1)  # output, input layer, upscale of the running job
        self.relay = Relay(self.native, started=self._started, unit=self._unit_done)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.operator.changed.connect(lambda *_: show_operator(self))
        self.source.changed.connect(self._show_source)
        for event in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self.reset_choices)
        show_operator(self)
        self._show_source()

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def _show_source(self, *_: Any) -> None:
        self.image.visible = self.source.value == "layer"
        self.folder.visible = self.source.value == "folder"

    def request(self) -> tuple[Any, str, Any, dict]:
        """``(source, output, operator, keywords)`` for ``restore_many`` from the form."""
        layer = self.image.value
        if self.source.value == "layer":
            if layer is None:
                raise TRegError("choose the image: add an Image layer and select it under 'image'")
            source, rgb = layer_array(layer), layer.rgb
        else:
            source, rgb = os.fspath(self.folder.value), None
        output = os.fspath(self.output.value)
        if output in ("", "."):
            raise TRegError("choose the output: a .zarr path (layer) or a folder (folder)")
        operator = operator_from_form(self)
        keywords = batch_settings(
            self.model.value, self.steps.value, self.seed.value, self.prompt.value, self.tile_size.value, rgb
        )
        return source, output, operator, {**keywords, **cluster_options(self.scheduler.value, self.workers.value)}

    def run(self, *_: Any):
        """Start the run in a thread; returns the napari thread worker (None if the form is incomplete)."""
        from napari_treg.batch import restore_many

        if self.is_running:
            return None
        try:
            source, output, operator, keywords = self.request()
        except (TRegError, ValueError) as error:
            show_error(explain_error(error))
            return None
        self._cancel.clear()
        self.report = None  # the live BatchReport, from the run's start on
        self._target = (output, self.image.value if self.source.value == "layer" else None, operator.upscale)
        self.activity = ActivityProgress("TReg batch", cancel=self.cancel)
        started, unit = self.relay.sender("started"), self.relay.sender("unit")

        def work() -> Any:
            return restore_many(
                source, output, operator, cancel=self._cancel, on_start=started, on_unit=unit, **keywords
            )

        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "Starting the cluster and planning the units..."
        self.worker = start_worker(work, self._finished, self._failed, self._ended)
        return self.worker

    # -- from the run (main thread, through the relay) ------------------------------------------

    def _started(self, report: Any) -> None:
        self.report = report
        self._refresh()

    def _unit_done(self, report: Any, name: str, error: str | None) -> None:
        self.report = report
        self._refresh()

    def _refresh(self) -> None:
        """Progress, and the zarr output as a layer once it exists (re-read so new chunks show)."""
        report = self.report
        if report is not None and self.activity is not None:
            self.status.value = f"{report.done} of {report.units} units done on {report.workers} workers..."
            # last: napari's progress handles pending events (maybe the run's end) while it updates
            self.activity.update(report.done + len(report.failed), report.units, "TReg batch")
        output, layer, factor = self._target
        if output.rstrip("/").endswith(".zarr") and os.path.exists(os.path.join(output, "zarr.json")):
            self._show_result(output, layer, factor)

    def _show_result(self, output: str, layer: Any, factor: int) -> None:
        """Add the output as a lazy layer, or re-read it so the chunks written since appear."""
        from napari_treg.batch import open_result

        try:
            data, _ = open_result(output)
        except (OSError, ValueError, KeyError):
            return  # still being created
        if self.result_layer is None or self.result_layer not in self.viewer.layers:
            geometry: dict = {}
            if layer is not None:
                scale, translate = restored_geometry(layer.scale, layer.translate, factor)
                geometry = {"scale": scale, "translate": translate, "rgb": layer.rgb}
            self.result_layer = self.viewer.add_image(data, name=f"{os.path.basename(output)} (batch)", **geometry)
        else:
            self.result_layer.data = data

    def cancel(self, *_: Any) -> None:
        """Stop after the units in progress; the output stays resumable."""
        self._cancel.set()
        self.status.value = "Cancelling..."

    def _finished(self, report: Any) -> None:
        if report.failed:
            show_error(
                f"{len(report.failed)} of {report.units} units failed: {', '.join(report.failed)} "
                f"(details in {report.log})"
            )
        else:
            show_info(f"Restored {report.computed} units ({report.skipped} already done) into {report.output}")
        self.status.value = f"Done: {report.done} of {report.units} units in {report.seconds:.1f} s."

    def _failed(self, error: Exception) -> None:
        if isinstance(error, Cancelled):
            show_info("Cancelled: the units done so far are kept; run again with the same settings to resume.")
            self.status.value = "Stopped."
        else:
            message = explain_error(error)
            show_error(message)
            self.status.value = f"Stopped. {headline(message)}"

    def _ended(self) -> None:
        if self.activity is not None:
            self.activity.close()
            self.activity = None
        self._refresh()  # the last units' chunks (the status already says how the run ended)
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
