"""Layer bookkeeping without Qt: TReg's own layers, planes, geometry, names, contrast, provenance.

napari places pixel ``i`` of a layer at world ``translate + scale * i`` (pixel
centres). A super-resolution measurement pixel ``j`` covers image pixels
``factor*j .. factor*j + factor - 1`` (see :mod:`napari_treg.operators.resample`),
so the restored layer gets ``scale / factor`` and a translate moved back by
``scale * (factor - 1) / (2 * factor)``; the simulated measurement gets the inverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Container, Sequence

import numpy as np

from napari_treg.errors import InvalidInputError

CURRENT_PLANE = "current plane"
WHOLE_STACK = "whole stack"
#: metadata keys of layers the plugin makes that are never offered as inputs
PREVIEW_KEY = "treg_preview"
#: metadata key of a simulated measurement's record (its operator, noise level and clean source layer)
SIMULATION_KEY = "treg_simulation"
RESULT_KEYS = ("treg", "treg_residual", PREVIEW_KEY)


# -- which layers are TReg's own ------------------------------------------------------------


def is_preview(layer: Any) -> bool:
    """The live preview of a running restoration."""
    return bool(layer.metadata.get(PREVIEW_KEY))


def simulation_record(layer: Any) -> dict:
    """What "Simulate degradation" (or a sample) recorded on a measurement (operator, noise, source); {} if none."""
    return {} if layer is None else dict(layer.metadata.get(SIMULATION_KEY, {}))


def is_result(layer: Any) -> bool:
    """A layer TReg made (a result, a residual, the preview): never picked as an input by itself."""
    return any(key in layer.metadata for key in RESULT_KEYS)


# -- planes of a stack ----------------------------------------------------------------------


def plane_ndim(rgb: bool) -> int:
    """Array axes of one image plane: (H, W) or (H, W, 3)."""
    return 3 if rgb else 2


def leading_shape(shape: Sequence[int], rgb: bool) -> tuple[int, ...]:
    """The stack axes (Z, T, ...) in front of the image plane."""
    return tuple(shape[: len(shape) - plane_ndim(rgb)])


def current_plane_index(data_position: Sequence[float], shape: Sequence[int], rgb: bool) -> tuple[int, ...]:
    """Index of the displayed plane from a position in data coordinates (one value per layer axis)."""
    lead = leading_shape(shape, rgb)
    position = list(data_position)[: len(lead)]
    return tuple(int(np.clip(round(float(p)), 0, n - 1)) for p, n in zip(position, lead))


#: the most channels a last axis can hold to look like colour or fluorescence channels, not image columns
MAX_CHANNELS = 4


def looks_like_channels(shape: Sequence[int], rgb: bool) -> bool:
    """Whether a non-RGB layer's last axis looks like channels (Y, X, 2): napari then shows Y images X by 2."""
    return not rgb and len(shape) >= 3 and 2 <= shape[-1] <= MAX_CHANNELS and min(shape[-3], shape[-2]) > MAX_CHANNELS


def check_not_channels(name: str, shape: Sequence[int], rgb: bool) -> None:
    """InvalidInputError, saying how to open it, for a layer whose last axis looks like channels."""
    if looks_like_channels(shape, rgb):
        raise InvalidInputError(
            f"the layer '{name}' has shape {tuple(shape)}: its last axis ({shape[-1]}) looks like channels, "
            f"but napari shows it as {shape[-3]} images of {shape[-2]}x{shape[-1]} pixels. Add it with one layer "
            "per channel (viewer.add_image(data, channel_axis=-1)) and restore each channel"
        )


@dataclass(frozen=True)
class Planes:
    """The part of a layer that one run restores."""

    data: np.ndarray
    #: leading index of the plane, or None for the whole stack (and for single images)
    index: tuple[int, ...] | None

    @property
    def description(self) -> str:
        if self.index is None:
            return WHOLE_STACK
        return f"{CURRENT_PLANE} {list(self.index)}" if self.index else "single image"


def select_planes(data: Any, rgb: bool, mode: str, index: Sequence[int]) -> Planes:
    """``data`` itself (whole stack / single image) or its plane at ``index``, as a NumPy copy."""
    lead = leading_shape(np.shape(data), rgb)
    if mode not in (CURRENT_PLANE, WHOLE_STACK):
        raise InvalidInputError(f"planes must be {CURRENT_PLANE!r} or {WHOLE_STACK!r}, got {mode!r}")
    if not lead:
        return Planes(np.array(data), ())
    if mode == WHOLE_STACK:
        return Planes(np.array(data), None)
    index = tuple(int(i) for i in index)
    if len(index) != len(lead) or any(not 0 <= i < n for i, n in zip(index, lead)):
        raise InvalidInputError(f"plane index {index} does not fit a stack of shape {lead}")
    return Planes(np.array(data[index]), index)


def mask_for_planes(
    mask: np.ndarray | None, planes: Planes, image_shape: Sequence[int], rgb: bool
) -> np.ndarray | None:
    """The 2D inpainting mask for the planes being restored.

    A mask can be 2D (the same for every plane) or a stack like the image: then the
    current plane's slice is used, or, for the whole stack, the one mask all planes share.
    """
    if mask is None:
        return None
    plane = plane_mask(np.asarray(mask), planes, image_shape, rgb)
    hw = tuple(image_shape[-3:-1] if rgb else image_shape[-2:])
    if plane.shape != hw:  # checked first: what a mask of another size marks is no help
        raise InvalidInputError(
            f"the mask is {plane.shape[0]}x{plane.shape[1]} but the image is {hw[0]}x{hw[1]}: draw it on a "
            "Labels layer of the image's size (select the image, then File > New Layer > Labels)"
        )
    return plane


def plane_mask(mask: np.ndarray, planes: Planes, image_shape: Sequence[int], rgb: bool) -> np.ndarray:
    """The 2D mask of :func:`mask_for_planes`, before its size is checked."""
    if mask.ndim == 2:
        return mask
    lead = leading_shape(image_shape, rgb)
    if mask.shape[: len(lead)] != lead or mask.ndim != len(lead) + 2:
        raise InvalidInputError(
            f"the mask has shape {mask.shape} but the image planes are {tuple(image_shape)}: "
            "draw the mask as a 2D Labels layer or as a stack matching the image"
        )
    if planes.index:
        return mask[planes.index]
    flat = mask.reshape(-1, *mask.shape[-2:]) > 0
    if not (flat == flat[:1]).all():
        raise InvalidInputError(
            "the mask differs from plane to plane: restore one plane at a time ('current plane'), "
            "or draw one 2D mask for the whole stack"
        )
    return flat[0]


def place_plane(result: np.ndarray, planes: Planes) -> np.ndarray:
    """A current-plane result with singleton stack axes in front, so it overlays its plane."""
    if not planes.index:
        return result
    return result.reshape((1,) * len(planes.index) + result.shape)


#: napari's unit of an axis given no unit
NO_UNIT = "pixel"


def voxel_size_um(layer: Any) -> tuple[float, float, float] | None:
    """The ``(z, y, x)`` voxel size in micrometres of a layer's last three axes, from its ``scale`` and ``units``.

    Length units (nm, um, mm ...) are converted. A scale without units (napari's "pixel", as scales
    were set before napari had units) is read as micrometres. None where the layer says nothing:
    fewer than three axes, a scale of all 1 without units, or an axis in another unit (time).
    """
    if layer.ndim < 3:
        return None
    scale = [float(value) for value in layer.scale[-3:]]
    units = list(layer.units)[-3:]
    if all(str(unit) == NO_UNIT for unit in units):
        return None if set(scale) == {1.0} else (scale[0], scale[1], scale[2])
    if any(str(unit.dimensionality) != "[length]" for unit in units):
        return None
    z, y, x = (float((value * unit).to("micrometer").magnitude) for value, unit in zip(scale, units))
    return (z, y, x)


# -- geometry -------------------------------------------------------------------------------


def linear_part(rotate: Any, shear: Any, ndim: int) -> np.ndarray:
    """napari's rotate @ shear of a layer (``layer.rotate``, ``layer.shear``): what acts after the scale."""
    rotate = np.asarray(rotate, dtype=np.float64)
    shear = np.asarray(shear, dtype=np.float64)
    if shear.ndim == 1:  # the upper triangle, row by row
        matrix = np.eye(ndim)
        matrix[np.triu_indices(ndim, 1)] = shear
        shear = matrix
    return rotate @ shear


def placed_geometry(
    scale: Sequence[float],
    translate: Sequence[float],
    step: Sequence[float],
    offset: Sequence[float],
    linear: np.ndarray | None = None,
) -> tuple[list[float], list[float]]:
    """Scale and translate of a layer whose pixel ``i`` lies at pixel ``step * i + offset`` of a layer.

    ``linear`` is that layer's rotate @ shear (identity if None): the new layer keeps it
    (and its affine), so the offset turns with it.
    """
    scale = np.asarray(scale, dtype=np.float64)
    linear = np.eye(len(scale)) if linear is None else np.asarray(linear, dtype=np.float64)
    moved = np.asarray(translate, dtype=np.float64) + linear @ (scale * np.asarray(offset, dtype=np.float64))
    return [float(s) for s in scale * np.asarray(step, dtype=np.float64)], [float(t) for t in moved]


def restored_geometry(
    scale: Sequence[float],
    translate: Sequence[float],
    factor: int,
    index: Sequence[int] | None = None,
    linear: np.ndarray | None = None,
) -> tuple[list[float], list[float]]:
    """Scale and translate of a restored layer (per layer axis, RGB axis excluded).

    The last two axes shrink by ``factor`` with pixel centres aligned; the stack axes of a
    current-plane result move to that plane; ``linear`` (rotate @ shear) is kept.
    """
    step, offset = np.ones(len(scale)), np.zeros(len(scale))
    step[-2:] = 1 / factor
    offset[-2:] = -(factor - 1) / (2 * factor)
    offset[: len(index or ())] += np.asarray(index or (), dtype=np.float64)
    return placed_geometry(scale, translate, step, offset, linear)


def measurement_geometry(
    scale: Sequence[float], translate: Sequence[float], factor: int, linear: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """Scale and translate of a simulated super-resolution measurement, overlaying its image."""
    step, offset = np.ones(len(scale)), np.zeros(len(scale))
    step[-2:] = factor
    offset[-2:] = (factor - 1) / 2
    return placed_geometry(scale, translate, step, offset, linear)


# -- display --------------------------------------------------------------------------------


def result_name(input_name: str, taken: Container[str], what: str = "TReg") -> str:
    """``"<input> TReg"``, or ``"<input> TReg #2"`` (#3, ...) when that name is ``taken``.

    Short and unique, so napari never appends its own " [1]" to a name the layer list cuts off.
    """
    name = f"{input_name} {what}"
    number = 2
    while name in taken:
        name = f"{input_name} {what} #{number}"
        number += 1
    return name


def percentile_limits(data: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """Contrast limits from percentiles of the finite values; never an empty range."""
    values = np.asarray(data, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:
        lo, hi = float(values.min()), float(values.max())
    if not hi > lo:
        hi = lo + (abs(lo) * 1e-3 or 1.0)
    return lo, hi


def display_kwargs(result: np.ndarray, rgb: bool, colormap: Any, input_limits: Sequence[float]) -> dict:
    """Colormap and contrast for a result: RGB keeps the input's limits (its colours), grey is stretched."""
    if rgb:
        return {"rgb": True, "contrast_limits": [float(v) for v in input_limits]}
    return {"colormap": colormap, "contrast_limits": list(percentile_limits(result))}


# -- provenance and metrics -----------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars, tuples and paths turned into JSON-friendly Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def restore_metadata(
    *,
    input_name: str,
    operator: dict,
    settings: dict,
    info: dict,
    planes: Planes,
    metrics: dict | None = None,
) -> dict:
    """``layer.metadata["treg"]``: everything needed to reproduce and judge a result."""
    record = {
        **info,  # from restore(return_info=True): params, model, seed, residual, seconds, versions
        "input_layer": input_name,
        "operator": operator,
        "settings": settings,
        "planes": planes.description,
        "plane_index": None if planes.index is None else list(planes.index),
    }
    if metrics:
        record["metrics"] = metrics
    return plain(record)


def batch_metadata(*, input_name: str, operator: dict, settings: dict, output: str, run: dict) -> dict:
    """``layer.metadata["treg"]`` of a batch dock's result and map layers: the keys of
    :func:`restore_metadata` that describe the run (``params``; ``model``, ``device`` and ``dtype`` as the
    workers loaded the model; ``seed``, ``versions``, the input, operator and settings), and ``batch``: the
    output, whether it is complete, and each unit's record (its seed, residual, text-conflict check and, for an
    ensemble, the ensemble's seeds, noise and checks).

    ``run`` is the output's ``napari_treg`` attributes (:func:`napari_treg.batch.open_result`).
    """
    from napari_treg.engine.run_info import package_versions

    params, units = dict(run.get("params") or {}), dict(run.get("planes") or {})
    loaded = next(iter(units.values()), {})  # the model as the workers loaded it (its name, device, dtype)
    record = {
        "params": params,
        **{key: loaded.get(key, params.get(key)) for key in ("model", "device", "dtype")},
        "seed": params.get("seed"),
        "versions": package_versions(),
        "input_layer": input_name,
        "operator": operator,
        "settings": settings,
        "planes": "every plane (batch)",
        "plane_index": None,
        "batch": {"output": output, "complete": run.get("complete"), "units": units},
    }
    return plain(record)


def reference_for(reference: np.ndarray, result_shape: Sequence[int], planes: Planes) -> np.ndarray:
    """The part of a reference layer to compare with a result (its plane, for a current-plane run)."""
    reference = np.asarray(reference)
    if planes.index and reference.shape != tuple(result_shape):
        tail = reference.shape[len(planes.index) :]
        if tail == tuple(result_shape):
            return reference[planes.index]
    return reference
