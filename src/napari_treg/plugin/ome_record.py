"""The saved napari layer record of an OME-TIFF, checked against the pixels it describes.

A record can be damaged, edited by hand, or written in a session that knew more than this one
(a custom colormap). :func:`layer_kwargs` keeps what fits the data and napari can build, and drops
the rest with one warning each, so the pixels always open. Each attribute is first checked for
its kind (finite numbers, the right length for the layer's axes), then tried on a tiny layer of the
same dimensions, so napari's own rules decide (colormap names, units, rotation matrices).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np

#: the attributes a record gives napari, in the order they are checked (rgb first: the others depend on it)
KEYS = (
    "rgb",
    "name",
    "scale",
    "translate",
    "rotate",
    "shear",
    "affine",
    "units",
    "axis_labels",
    "contrast_limits",
    "colormap",
    "metadata",
)
#: attributes that are one number per layer axis
PER_AXIS = ("scale", "translate", "units", "axis_labels")
#: attributes that are one flat list of numbers
FLAT = ("scale", "translate", "contrast_limits")
#: attributes that must hold finite numbers only
NUMERIC = ("scale", "translate", "rotate", "shear", "affine", "contrast_limits")
#: dtypes OME-TIFF cannot hold, stored converted exactly and converted back on reading
RESTORED_DTYPES = ("float16", "int64", "uint64")


def layer_kwargs(record: dict, data: np.ndarray, source: str) -> dict:
    """napari ``Image`` keyword arguments from ``record`` that fit ``data``; the rest dropped with a warning."""
    kwargs: dict[str, Any] = {}
    rgb = bool(record.get("rgb") is True)
    if rgb and not (data.ndim >= 3 and data.shape[-1] in (3, 4)):
        _drop(source, "rgb", True, f"the data of shape {data.shape} has no colour axis of 3 or 4")
        rgb = False
    kwargs["rgb"] = rgb
    ndim = data.ndim - (1 if rgb else 0)
    trial = _layer_trial(data.dtype, ndim, rgb)
    for key in KEYS[1:]:
        value = record.get(key)
        if value is None or (key in ("units", "axis_labels") and value == []):  # [] = not set
            continue
        if key == "colormap" and rgb:
            continue  # an RGB layer has no colormap
        problem = _kind_problem(key, value, ndim) or trial(key, value)
        if problem:
            _drop(source, key, value, problem)
        else:
            kwargs[key] = value
    return kwargs


def restored_shape(record: dict, data: np.ndarray) -> np.ndarray:
    """``data`` with the singleton axes tifffile squeezed away put back, as the record's ``shape`` says."""
    shape = record.get("shape")
    if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
        return data
    kept = [n for n in shape if n != 1]
    if len(shape) > 32 or kept != [n for n in data.shape if n != 1] or math.prod(shape) != data.size:
        return data
    return data.reshape(shape)


def restored_dtype(record: dict, data: np.ndarray) -> np.ndarray:
    """The layer's own dtype when the writer had to convert it (float16, int64, uint64) and it is exact."""
    dtype = record.get("dtype")
    if dtype not in RESTORED_DTYPES or data.dtype.kind not in "iuf":
        return data
    converted = data.astype(dtype)
    return converted if np.array_equal(converted, data, equal_nan=True) else data


def _kind_problem(key: str, value: Any, ndim: int) -> str | None:
    """Why ``value`` cannot be the layer's ``key`` whatever napari says, or None."""
    if key == "name" and not isinstance(value, str):
        return f"a name is text, not {type(value).__name__}"
    if key == "metadata" and not isinstance(value, dict):
        return f"metadata is a dict, not {type(value).__name__}"
    if key in NUMERIC and not _finite_numbers(value):
        return "it must hold finite numbers only"
    if key in FLAT and not (isinstance(value, list) and not any(isinstance(v, list) for v in value)):
        return "it must be a list of numbers"
    if key in PER_AXIS and (not isinstance(value, list) or len(value) != ndim):
        return f"the layer has {ndim} axes"
    if key == "scale" and any(v == 0 for v in value):
        return "a scale of 0 has no size"
    if key == "contrast_limits" and not (len(value) == 2 and value[0] < value[1]):
        return "contrast limits are two numbers, low < high"
    return None


def _finite_numbers(value: Any) -> bool:
    """Whether ``value`` is a number or a (nested) list of numbers, all finite."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, list) and bool(value) and all(_finite_numbers(v) for v in value)


def _layer_trial(dtype: np.dtype, ndim: int, rgb: bool) -> Callable[[str, Any], str | None]:
    """``trial(key, value)``: napari's complaint about a tiny layer with that attribute, or None."""
    try:
        from napari.layers import Image
    except ImportError:  # napari absent: only the checks of kind apply
        return lambda key, value: None
    tiny = np.zeros((2,) * ndim + ((3,) if rgb else ()), dtype=dtype if dtype.kind in "biuf" else np.float32)

    def trial(key: str, value: Any) -> str | None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                Image(tiny, rgb=rgb, **{key: value})
        except Exception as error:  # noqa: BLE001 - whatever napari refuses
            first = " ".join(str(error).split()).split(". ")[0].strip("'\"")
            return first[:120] or type(error).__name__
        return None

    return trial


def _drop(source: str, key: str, value: Any, reason: str) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    warnings.warn(f"{source}: the saved {key} {shown} does not fit the image ({reason}); it was left out", stacklevel=3)
