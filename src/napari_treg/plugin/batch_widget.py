"""Send the current Image layer (or a folder of images) to a dask cluster; the result opens lazily.

The layer's data (a NumPy, dask or zarr array) goes to :func:`napari_treg.batch.restore_many`
as it is: nothing is loaded here. A zarr output is added as a layer as soon as it exists
and refreshed as units complete; a folder output is reported when done. Cancel stops
the run; the output stays resumable (run again with the same settings). The run reports its
start and each unit through the plugin's one worker -> GUI relay (:class:`.worker.Relay`), and
shows napari's progress, as the restore widget does.

Every field's default and range come from the settings classes (:func:`napari_treg.settings.specs`),
and the form is checked on the main thread as ``restore_many`` checks it, before any cluster
starts. With ``samples`` > 1 each unit is an ensemble: a zarr output's maps (std, data share,
text influence) are added as layers when the run ends, named and coloured as the restore
widget's.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, Container, FileEdit, LineEdit, PushButton, SpinBox, Widget
from napari.utils.notifications import show_error, show_info

from napari_treg.engine.maps import ENSEMBLE_MAPS, ensemble_map_names
from napari_treg.engine.restorer import RunSettings
from napari_treg.errors import Cancelled, TRegError
from napari_treg.failures import describe_failure
from napari_treg.io.files import companion
from napari_treg.models.options import ModelSettings
from napari_treg.plugin.forms import (
    apply_operator_record,
    layer_combo,
    operator_from_form,
    operator_settings,
    operator_widgets,
    sentence,
    setting_value,
    setting_widget,
    show_operator,
    status_label,
)
from napari_treg.plugin.layers import batch_metadata, restored_geometry, simulation_record
from napari_treg.plugin.messages import explain_error, few_steps_line, headline
from napari_treg.plugin.output_layers import MAP_KEY
from napari_treg.plugin.restore_form import samples_widget
from napari_treg.plugin.worker import ActivityProgress, Relay, start_worker
from napari_treg.settings import spec_named
from napari_treg.solver import TRegSettings
from napari_treg.solver.text import TextSettings

if TYPE_CHECKING:
    import napari

    from napari_treg.operators import LinearOperator

SOURCES = ("layer", "folder")
#: ``restore`` keywords read straight from the form's fields of the same name
FORM_SETTINGS = ("prompt", "guidance", "steps", "seed", "tile_overlap")
SAMPLES_HELP = (
    "1: one restoration per unit. 2 or more: an ensemble per unit (its mean is the output); its "
    "std, data share and, with a prompt and guidance > 0, text influence are written beside the "
    "output (a .zarr output's are added as layers at the end); that many times as long"
)


def settings_widgets() -> list[Widget]:
    """The model, text, method and run fields, each with its settings class's default, range and help."""
    model, prompt = spec_named(ModelSettings, "model"), spec_named(TextSettings, "prompt")
    tile, overlap = spec_named(RunSettings, "tile_size"), spec_named(RunSettings, "tile_overlap")
    tile_size = setting_widget(tile, step=64)
    return [
        LineEdit(name="model", label=model.label, value=model.default, tooltip=sentence(model.help)),
        setting_widget(prompt),
        setting_widget(spec_named(TRegSettings, "guidance")),
        setting_widget(spec_named(TRegSettings, "steps")),
        setting_widget(spec_named(RunSettings, "seed")),
        samples_widget(SAMPLES_HELP),
        tile_size,
        setting_widget(overlap),
    ]


def layer_array(layer: Any) -> Any:
    """The full-resolution data of an Image layer, unloaded (the first level of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def batch_settings(values: dict[str, Any], rgb: bool | None) -> dict:
    """``restore`` keywords from the form's values (blank model: the default one; tile size 0: one piece)."""
    settings = {name: values[name] for name in FORM_SETTINGS}
    model = str(values["model"]).strip()
    return {
        **settings,
        "model": model or spec_named(ModelSettings, "model").default,
        "tile_size": setting_value(spec_named(RunSettings, "tile_size"), values["tile_size"]),
        "rgb": rgb,
    }


def result_display(layer: Any) -> dict[str, Any]:
    """How a batch output over ``layer`` is shown: the input's contrast, colormap, units and axis labels.

    The output is opened while it is still empty, so napari's own guess of the contrast would be [0, 1]
    whatever the data's range; the restored planes keep the input's intensity scale. None for a folder.
    """
    if layer is None:
        return {}
    shown = {"units": layer.units, "axis_labels": layer.axis_labels, "contrast_limits": list(layer.contrast_limits)}
    return {**shown, "rgb": True} if layer.rgb else {**shown, "colormap": layer.colormap}


def run_record(request: BatchRequest, attributes: dict) -> dict:
    """The record of a batch run's layers (:func:`napari_treg.plugin.layers.batch_metadata`), from its output's
    attributes."""
    return batch_metadata(
        input_name=request.input_name,
        operator=request.operator_record,
        settings=request.keywords,
        output=request.output,
        run=attributes,
    )


def cluster_failure(error: BaseException, report: Any) -> str:
    """An error nobody foresaw (the cluster, a library): not the user's inputs, so not "check the inputs"."""
    text = " ".join(str(error).split())[:200] or type(error).__name__
    log = f" ({report.log})" if report is not None and report.log else ""
    return (
        f"The batch run stopped: {type(error).__name__}: {text}. The units done so far are kept; the run's log"
        f"{log} has the details. Run again to resume, or give a scheduler address to use a cluster started apart."
    )


def cluster_options(scheduler: str, workers: int) -> dict:
    """``scheduler`` (blank: a local cluster) and ``workers`` (0: automatic) for ``restore_many``."""
    return {"scheduler": scheduler.strip() or None, "workers": int(workers) or None}


@dataclass(frozen=True)
class BatchRequest:
    """A checked run of the form: ``restore_many(source, output, operator, **keywords)``."""

    source: Any
    output: str
    operator: LinearOperator
    #: restore keywords, cluster options and ``samples`` (only when > 1)
    keywords: dict
    #: the ensemble maps written beside each unit (none without an ensemble)
    maps: tuple[str, ...] = ()
    #: for the layers' record: the input's name and the operator as the form chose it (``{"name": ..., param: ...}``)
    input_name: str = ""
    operator_record: dict = field(default_factory=dict)

    @property
    def is_zarr(self) -> bool:
        return self.output.rstrip("/").endswith(".zarr")


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
                *settings_widgets(),
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
        self.status = status_label()
        self._actions = Container(labels=False, widgets=[self.run_button, self.cancel_button, self.status])
        self.native.layout().addWidget(self._actions.native)
        self.viewer = viewer
        self.worker: Any = None
        self.report: Any = None
        self.result_layer = None  # the output shown as a layer (of the output ``self._shown_output``)
        self.map_layers: dict[str, Any] = {}  # an ensemble's map layers, by map name
        self._shown_output: str | None = None
        self._cancel = threading.Event()
        self.activity: ActivityProgress | None = None  # the run's bar in napari's activity dock
        self._target: tuple[BatchRequest | None, Any] = (None, None)  # the running request, its input layer
        self.relay = Relay(self.native, started=self._started, unit=self._unit_done)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.operator.changed.connect(lambda *_: show_operator(self))
        self.source.changed.connect(self._show_fields)
        self.tile_size.changed.connect(self._show_fields)
        self.image.changed.connect(self._follow_record)
        for event in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, event).connect(self.reset_choices)
        show_operator(self)
        self._show_fields()

    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def _show_fields(self, *_: Any) -> None:
        self.image.visible = self.source.value == "layer"
        self.folder.visible = self.source.value == "folder"
        self.tile_overlap.visible = bool(self.tile_size.value)

    def _follow_record(self, *_: Any) -> None:
        """A measurement made by Simulate (or a sample) sets the operator it was made with, as in the restore dock."""
        layer = self.image.value
        record = simulation_record(layer)
        if "operator" in record:
            apply_operator_record(self, record["operator"], self.viewer.layers)
            show_operator(self)

    def request(self) -> BatchRequest:
        """The form as a :class:`BatchRequest`, checked as ``restore_many`` checks it (main thread; raises
        :class:`~napari_treg.errors.InvalidInputError` naming a bad value, before any cluster starts)."""
        from napari_treg.batch.runner import checked_settings

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
        keywords = batch_settings({name: self[name].value for name in ("model", "tile_size", *FORM_SETTINGS)}, rgb)
        _, settings, _ = checked_settings(keywords)
        samples = int(self.samples.value)
        ensemble = {"samples": samples} if samples > 1 else {}
        return BatchRequest(
            source,
            output,
            operator,
            {**keywords, **ensemble, **cluster_options(self.scheduler.value, self.workers.value)},
            ensemble_map_names(settings.uses_text) if ensemble else (),
            input_name=layer.name if self.source.value == "layer" else source,
            operator_record={"name": self.operator.value, **operator_settings(self)},
        )

    def run(self, *_: Any):
        """Start the run in a thread; returns the napari thread worker (None if the form is incomplete)."""
        from napari_treg.batch import restore_many

        if self.is_running:
            return None
        try:
            request = self.request()
        except (TRegError, ValueError) as error:
            message = explain_error(error)
            show_error(message)
            self.status.value = headline(message)
            return None
        self._cancel.clear()
        if request.output != self._shown_output:  # another output: its own layers, named after it
            self.result_layer, self.map_layers, self._shown_output = None, {}, request.output
        self.report = None  # the live BatchReport, from the run's start on
        self._target = (request, self.image.value if self.source.value == "layer" else None)
        self.activity = ActivityProgress("TReg batch", cancel=self.cancel)
        started, unit = self.relay.sender("started"), self.relay.sender("unit")

        def work() -> Any:
            return restore_many(
                request.source,
                request.output,
                request.operator,
                cancel=self._cancel,
                on_start=started,
                on_unit=unit,
                **request.keywords,
            )

        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = "Starting the cluster and planning the units..."
        self.worker = start_worker(work, self._finished, self._failed, self._ended)
        return self.worker

    # -- from the run (main thread, through the relay) ------------------------------------------

    def _started(self, report: Any) -> None:
        self.report = report
        if report.note:
            show_info(f"Batch: {report.note}.")
        self._refresh()

    def _unit_done(self, report: Any, name: str, error: str | None) -> None:
        self.report = report
        self._refresh()

    def _refresh(self) -> None:
        """Progress, and the zarr output as a layer once it exists (re-read so new chunks show)."""
        report = self.report
        if report is not None and self.activity is not None:
            workers = f"{report.workers} worker{'s' if report.workers != 1 else ''}"
            where = "in napari's process, one at a time" if report.note else f"on {workers}"
            self.status.value = f"{report.done} of {report.units} units done {where}..."
            # last: napari's progress handles pending events (maybe the run's end) while it updates
            self.activity.update(report.done + len(report.failed), report.units, "TReg batch")
        request, layer = self._target
        if request is not None and request.is_zarr and os.path.exists(os.path.join(request.output, "zarr.json")):
            self._show_result(request, layer)

    def _geometry(self, request: BatchRequest, layer: Any) -> dict:
        """Scale and translate of the restored planes over the input layer (none for a folder)."""
        if layer is None:
            return {}
        scale, translate = restored_geometry(layer.scale, layer.translate, request.operator.upscale)
        return {"scale": scale, "translate": translate}

    def _show_result(self, request: BatchRequest, layer: Any) -> None:
        """Add the output as a lazy layer, or re-read it so the chunks written since appear."""
        from napari_treg.batch import open_result

        try:
            data, attributes = open_result(request.output)
        except (OSError, ValueError, KeyError):
            return  # still being created
        metadata = {"treg": run_record(request, attributes), **({MAP_KEY: "mean"} if request.maps else {})}
        if self.result_layer is None or self.result_layer not in self.viewer.layers:
            name = f"{os.path.basename(request.output.rstrip('/'))} (batch)"
            shown = {**self._geometry(request, layer), **result_display(layer)}
            self.result_layer = self.viewer.add_image(data, name=name, metadata=metadata, **shown)
        else:
            self.result_layer.data = data
            self.result_layer.metadata = {**self.result_layer.metadata, **metadata}

    def _show_maps(self, request: BatchRequest, layer: Any) -> None:
        """Add (or re-read) the ensemble's map stores beside a zarr output as lazy layers, placed as the
        result and named and coloured as the restore widget's (colour channels averaged), each with the
        run's record (``metadata["treg"]``, as the result's)."""
        from napari_treg.batch import open_result

        if self.result_layer is None:
            return
        record = self.result_layer.metadata.get("treg", {})
        for kind in ENSEMBLE_MAPS:
            attribute, suffix, colormap = kind.name, kind.layer_suffix, kind.colormap
            if attribute not in request.maps:
                continue
            try:
                data, _ = open_result(companion(request.output.rstrip("/"), attribute))
            except (OSError, ValueError, KeyError):
                continue  # not made: the run stopped before creating it
            data = data.mean(axis=-1) if layer is not None and layer.rgb else data
            known = self.map_layers.get(attribute)
            if known is not None and known in self.viewer.layers:
                known.data = data
                known.metadata = {**known.metadata, "treg": record, MAP_KEY: attribute}
                continue
            limits = {"contrast_limits": [0.0, 1.0]} if attribute == "data_share" else {}
            placed = {"units": layer.units, "axis_labels": layer.axis_labels} if layer is not None else {}
            self.map_layers[attribute] = self.viewer.add_image(
                data,
                name=f"{self.result_layer.name}{suffix}",
                colormap=colormap,
                metadata={"treg": record, MAP_KEY: attribute},
                **self._geometry(request, layer),
                **placed,
                **limits,
            )

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
            show_info(
                f"Restored {report.computed} units ({report.skipped} already done) into {report.output}"
                + self._maps_note()
            )
        few_steps = "" if report.too_few_steps is None else " " + few_steps_line(report.too_few_steps)
        self.status.value = (
            f"Done: {report.done} of {report.units} units in {report.seconds:.1f} s." + self._maps_note() + few_steps
        )

    def _maps_note(self) -> str:
        """Where a folder output's ensemble maps are (a zarr output's are added as layers)."""
        request = self._target[0]
        if request is None or not request.maps or request.is_zarr:
            return ""
        files = ", ".join(f"<stem>.{name}<suffix>" for name in request.maps)
        return f" The ensemble maps are next to each output file in {request.output}: {files}."

    def _failed(self, error: Exception) -> None:
        if isinstance(error, Cancelled):
            show_info("Cancelled: the units done so far are kept; run again with the same settings to resume.")
            self.status.value = "Stopped."
        else:
            message = (
                explain_error(error) if describe_failure(error) is not None else cluster_failure(error, self.report)
            )
            show_error(message)
            self.status.value = f"Stopped. {headline(message)}"

    def _ended(self) -> None:
        if self.activity is not None:
            self.activity.close()
            self.activity = None
        self._refresh()  # the last units' chunks (the status already says how the run ended)
        request, layer = self._target
        if request is not None and request.maps and request.is_zarr and self.report is not None:
            self._show_maps(request, layer)
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
