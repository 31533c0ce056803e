"""The layers a restoration adds, without Qt: the result, its residual, the live preview.

A finished run is a list of :class:`OutputLayer` (an array, a name suffix, napari layer
keyword arguments): :func:`run_outputs` makes it, :func:`add_outputs` places every entry
over the input layer and adds it. More maps of a run are more entries, not more code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image

from napari_treg.engine.maps import ENSEMBLE_MAPS
from napari_treg.plugin.layers import (
    PREVIEW_KEY,
    display_kwargs,
    is_preview,
    linear_part,
    percentile_limits,
    place_plane,
    restore_metadata,
    restored_geometry,
)

if TYPE_CHECKING:
    import napari

    from napari_treg.plugin.restoration import Outcome, RestoreRequest

PREVIEW_NAME = "TReg preview"
#: the ensemble's maps: (its attribute, the layer's suffix, colormap); the data share's contrast is fixed to [0, 1]
#: metadata key naming which ensemble map a layer shows (next to the run's record in ``metadata["treg"]``)
MAP_KEY = "treg_map"


@dataclass(frozen=True)
class OutputLayer:
    """One layer a run adds, named ``<result name><suffix>``."""

    #: the restored planes (or a map of them), as restore returned them (no stack axes added)
    data: np.ndarray
    #: "" for the result itself; e.g. " residual"
    suffix: str = ""
    #: napari Image keyword arguments: colormap, contrast_limits, visible, rgb, metadata ...
    kwargs: dict[str, Any] = field(default_factory=dict)
    #: on the measurement's pixel grid (the residual |A x - y|) rather than the restored one
    measurement_grid: bool = False
    #: inserted just below the first output (the result) instead of on top
    below: bool = False


def run_outputs(request: RestoreRequest, outcome: Outcome, name: str) -> list[OutputLayer]:
    """The result (with its provenance in ``metadata["treg"]``), an ensemble's maps, and the residual below.

    An ensemble's result is its mean (``"<name> mean"``), followed by its std, data share and
    text influence (when computed), each carrying the same record.
    """
    source = request.source
    colormap = "gray" if request.rgb else source.colormap
    record = result_record(request, outcome)
    result_kwargs = {
        "rgb": request.rgb,
        **display_kwargs(outcome.result, request.rgb, colormap, source.contrast_limits),
        "metadata": {"treg": record},
    }
    if outcome.ensemble is None:
        outputs = [OutputLayer(outcome.result, "", result_kwargs)]
    else:
        result_kwargs["metadata"] = {"treg": record, MAP_KEY: "mean"}
        outputs = [OutputLayer(outcome.result, " mean", result_kwargs), *ensemble_outputs(outcome, record, request.rgb)]
    if outcome.residual is not None:
        residual = {
            "rgb": request.rgb,
            "colormap": None if request.rgb else "magma",
            "visible": False,
            "contrast_limits": list(percentile_limits(outcome.residual, 0.0, 99.5)),
            "metadata": {"treg_residual": {"result": name, "residual": outcome.info.get("residual")}},
        }
        outputs.append(OutputLayer(outcome.residual, " residual", residual, measurement_grid=True, below=True))
    return outputs


def taken_names(names: list[str]) -> set[str]:
    """Names a new result cannot have: the layers' names, and those an output's suffix was added to."""
    suffixes = (" mean", " residual", *(m.layer_suffix for m in ENSEMBLE_MAPS))
    stems = {name[: -len(suffix)] for name in names for suffix in suffixes if name.endswith(suffix)}
    return set(names) | stems


def ensemble_outputs(outcome: Outcome, record: dict, rgb: bool) -> list[OutputLayer]:
    """The std, data share, text influence and (hidden) uncorrected std of an ensemble, where it made them (one
    channel each: colour channels averaged)."""
    outputs = []
    for kind in ENSEMBLE_MAPS:
        attribute, suffix, colormap = kind.name, kind.layer_suffix, kind.colormap
        data = getattr(outcome.ensemble, attribute)
        if data is None:
            continue
        data = data.mean(axis=-1) if rgb else data
        limits = [0.0, 1.0] if attribute == "data_share" else [0.0, percentile_limits(data, 0.0, 99.5)[1]]
        kwargs = {"colormap": colormap, "contrast_limits": limits, "metadata": {"treg": record, MAP_KEY: attribute}}
        if kind.needs_holdout:  # the std before the held-out check's correction: listed, not in the grid
            kwargs["visible"] = False
        outputs.append(OutputLayer(data, suffix, kwargs))
    return outputs


def result_record(request: RestoreRequest, outcome: Outcome) -> dict:
    """``metadata["treg"]`` of the result: the run's info, the widget's settings, the planes, the metrics."""
    record = restore_metadata(
        input_name=request.source.name,
        operator=request.record["operator"],
        settings={
            **request.settings.as_values(),
            **asdict(request.model),
            "reference": request.record["reference"],
            "samples": request.samples,
        },
        info=outcome.info,
        planes=request.planes,
        metrics=outcome.metrics,
    )
    record["load_seconds"] = round(outcome.load_seconds, 3)
    return record


def output_geometry(source: Any, upscale: int, index: tuple[int, ...] | None) -> dict[str, Any]:
    """Where an output lies: the input layer's transform, pixels ``upscale`` times smaller, at its plane."""
    linear = linear_part(source.rotate, source.shear, source.ndim)
    scale, translate = restored_geometry(source.scale, source.translate, upscale, index, linear)
    return {
        "scale": scale,
        "translate": translate,
        "units": source.units,
        "axis_labels": source.axis_labels,
        "rotate": source.rotate,
        "shear": source.shear,
        "affine": source.affine.affine_matrix,
    }


def output_layer(output: OutputLayer, request: RestoreRequest, name: str) -> Image:
    """The napari layer of one output, placed over the input layer (and at its plane for a current-plane run)."""
    upscale = 1 if output.measurement_grid else request.operator.upscale
    geometry = output_geometry(request.source, upscale, request.planes.index)
    return Image(place_plane(output.data, request.planes), name=f"{name}{output.suffix}", **geometry, **output.kwargs)


def add_outputs(viewer: napari.Viewer, request: RestoreRequest, name: str, outputs: list[OutputLayer]) -> list[Image]:
    """Add the outputs in order, on top (those marked ``below`` just under the first); select the first."""
    layers = [output_layer(output, request, name) for output in outputs]
    first = layers[0]
    viewer.layers.append(first)
    for output, layer in zip(outputs[1:], layers[1:]):
        if output.below:
            viewer.layers.insert(viewer.layers.index(first), layer)
        else:
            viewer.layers.append(layer)
    viewer.layers.selection.active = first
    return layers


# -- the live preview -----------------------------------------------------------------------


def preview_layer(viewer: napari.Viewer) -> Image | None:
    """The preview layer, if there is one."""
    for layer in viewer.layers:
        if is_preview(layer):
            return layer
    return None


def remove_preview(viewer: napari.Viewer) -> None:
    layer = preview_layer(viewer)
    if layer is not None:
        viewer.layers.remove(layer)


def preview_kwargs(source: Any, upscale: int, rgb: bool) -> dict[str, Any]:
    """Placement of a one-plane preview over the input (a plane of a stack has no rotation of its own)."""
    kwargs: dict[str, Any] = {}
    linear = None
    if source.ndim == 2:
        kwargs = {"rotate": source.rotate, "shear": source.shear, "affine": source.affine.affine_matrix}
        linear = linear_part(source.rotate, source.shear, 2)
    scale, translate = restored_geometry(source.scale, source.translate, upscale, linear=linear)
    return {
        "name": PREVIEW_NAME,
        "rgb": rgb,
        "scale": scale[-2:],
        "translate": translate[-2:],
        "units": source.units[-2:],
        "axis_labels": source.axis_labels[-2:],
        "colormap": None if rgb else source.colormap,
        "metadata": {PREVIEW_KEY: True},
        **kwargs,
    }


def show_preview(viewer: napari.Viewer, request: RestoreRequest, preview: np.ndarray) -> None:
    """Show the current estimate: update the preview layer, or add it over the input.

    The layer gets its own copy: the worker may reuse the array it sent (a tiled run's canvas)
    while napari is still drawing it.
    """
    preview = np.array(preview, copy=True)
    source = request.source
    limits = list(source.contrast_limits) if request.rgb else list(percentile_limits(preview))
    existing = preview_layer(viewer)
    if existing is not None:
        existing.data = preview
        existing.contrast_limits = limits
        return
    viewer.add_image(preview, contrast_limits=limits, **preview_kwargs(source, request.operator.upscale, request.rgb))
