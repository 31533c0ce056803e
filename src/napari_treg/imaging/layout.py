"""Image handling: NumPy arrays as napari holds them <-> model tensors.

- Layout: ``(H, W)`` grey, ``(H, W, 3)`` RGB (``(H, W, 4)`` RGBA: alpha is
  dropped), or a stack ``(..., H, W)`` (``(..., H, W, 3)`` for RGB stacks)
  restored plane by plane.
- Intensities: a linear map sends the ``lower`` and ``upper`` percentiles of
  the whole input (default 0.1 % and 99.9 %, over all planes) to -1 and 1, the
  model's range, and the result is mapped back with the inverse. Values beyond
  the percentiles are kept (not clipped). A constant image maps to 0.
- Grey images go through the model as three equal channels and come back as
  their mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_treg import memory
from napari_treg.errors import InvalidInputError, OutOfMemoryError
from napari_treg.operators.base import as_numpy
from napari_treg.operators.convolution import mirror_index

MIN_SIZE = 2
MAX_NDIM = 5
MAX_MAGNITUDE = 1e30  # larger finite values overflow float32 intensity maths
#: the largest value in the model's units (the intensity range mapped to [-1, 1]); the sampler's float32
#: sums of squares overflow near 1e19 (a single pixel of 1e20 made the tiny and analytic models diverge)
MAX_MODEL_MAGNITUDE = 1e9
#: the largest simulated noise sigma, in the model's units (the intensity range spans 2): 50 times the range
MAX_NOISE_SIGMA = 100.0
#: host memory to prepare one input value: a float32 copy (4 bytes) and its float64 map to model units (8),
#: with the float32 measurement in model units (4) alongside
PREPARE_BYTES_PER_VALUE = 16


@dataclass(frozen=True)
class Layout:
    """How an input array maps to a batch of planes ``(N, C, H, W)``."""

    shape: tuple[int, ...]
    dtype: np.dtype
    rgb: bool
    alpha_dropped: bool = False

    @property
    def leading(self) -> tuple[int, ...]:
        """Stack axes before the image plane."""
        return self.shape[:-3] if self.rgb else self.shape[:-2]

    @property
    def hw(self) -> tuple[int, int]:
        return self.shape[-3:-1] if self.rgb else self.shape[-2:]

    @property
    def channels(self) -> int:
        return 3 if self.rgb else 1

    @property
    def num_planes(self) -> int:
        return int(np.prod(self.leading, dtype=np.int64))

    def output_shape(self, hw: tuple[int, int]) -> tuple[int, ...]:
        """The shape of a result whose planes are ``hw``."""
        return (*self.leading, *hw, 3) if self.rgb else (*self.leading, *hw)


def check_image(image: object, name: str = "image") -> np.ndarray:
    """Validate an input image (read-only view; never copied or modified here)."""
    image = as_numpy(
        image, name, f"to fill them in, pass np.ma.getdata({name}) with Inpainting(np.ma.getmaskarray({name}))"
    )
    try:
        array = np.asarray(image)
    except Exception as error:  # noqa: BLE001 - anything array-like that fails
        raise InvalidInputError(f"{name} cannot be read as an array: {error}") from None
    kind = array.dtype.kind
    if kind == "b":
        raise InvalidInputError(f"{name} is boolean: pass intensities, or use it as an inpainting mask")
    if kind == "c":
        raise InvalidInputError(f"{name} is complex: pass its magnitude (np.abs) or real part")
    if kind not in "iuf":
        raise InvalidInputError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if array.ndim < 2:
        raise InvalidInputError(f"{name} must be at least 2D (H, W), got shape {array.shape}")
    if array.ndim > MAX_NDIM + 1:
        raise InvalidInputError(
            f"{name} has {array.ndim} dimensions {array.shape}; at most {MAX_NDIM} stack + plane axes are supported"
        )
    if kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InvalidInputError(
                f"{name} has {bad} NaN or infinite pixel(s): replace them first, e.g. np.nan_to_num({name})"
            )
        _check_magnitude(array, name)
    return array


def _check_magnitude(array: np.ndarray, name: str) -> None:
    """Refuse values too large for float32 processing (the model's intensity maths)."""
    if array.size and float(np.max(np.abs(array))) > MAX_MAGNITUDE:
        raise InvalidInputError(
            f"{name} has values up to {float(np.max(np.abs(array))):.3g}, beyond the {MAX_MAGNITUDE:.0e} "
            f"that float32 processing supports: rescale it first (e.g. divide by its maximum)"
        )


def layout_of(array: np.ndarray, rgb: bool | None = None) -> Layout:
    """Decide grey / RGB / stack like napari does: a last axis of 3 or 4 is colour."""
    if rgb is None:
        rgb = array.ndim >= 3 and array.shape[-1] in (3, 4)
    if rgb and (array.ndim < 3 or array.shape[-1] not in (3, 4)):
        raise InvalidInputError(f"rgb=True needs a last axis of 3 or 4 channels, got shape {array.shape}")
    alpha = bool(rgb and array.shape[-1] == 4)
    shape = (*array.shape[:-1], 3) if alpha else array.shape
    layout = Layout(tuple(shape), array.dtype, bool(rgb), alpha)
    h, w = layout.hw
    if h < MIN_SIZE or w < MIN_SIZE:
        raise InvalidInputError(f"the image planes are {h}x{w} pixels; at least {MIN_SIZE}x{MIN_SIZE} are needed")
    if layout.num_planes == 0:
        raise InvalidInputError(f"the image is empty (shape {array.shape})")
    return layout


def check_host_memory(layout: Layout) -> None:
    """Refuse, before allocating, an image whose preparation needs more host memory than is available.

    Preparing needs :data:`PREPARE_BYTES_PER_VALUE` bytes per value (a float32 copy and its float64
    map to the model's units); a 60000x60000 image needs 54 GiB. Without a way to ask (not Linux)
    the allocation itself fails, and the callers turn its ``MemoryError`` into the same error.
    """
    values = int(np.prod(layout.shape, dtype=np.int64))
    needed = values * PREPARE_BYTES_PER_VALUE
    available = memory.available_host_bytes()
    if available is not None and needed > available:
        raise OutOfMemoryError(
            f"out of host memory: the image has {values:,} values ({' x '.join(map(str, layout.shape))}); preparing "
            f"it needs about {needed / 2**30:.1f} GiB and {available / 2**30:.1f} GiB are available. "
            "Restore it in parts (tiles cropped from it, or a few planes of a stack at a time), "
            "a smaller or binned image, or on a machine with more memory"
        )


def to_planes(array: np.ndarray, layout: Layout) -> np.ndarray:
    """A float32 copy ``(N, C, H, W)`` of the image's planes (the input is not touched)."""
    check_host_memory(layout)
    if layout.alpha_dropped:
        array = array[..., :3]
    h, w = layout.hw
    planes = np.asarray(array, dtype=np.float32).reshape(-1, *((h, w, 3) if layout.rgb else (h, w)))
    planes = np.moveaxis(planes, -1, 1) if layout.rgb else planes[:, None]
    return np.ascontiguousarray(planes)


def from_planes(planes: np.ndarray, layout: Layout) -> np.ndarray:
    """Inverse of :func:`to_planes` for planes ``(N, C, h, w)`` of any size ``h, w``."""
    hw = planes.shape[-2:]
    if layout.rgb:
        planes = np.moveaxis(planes, 1, -1)
    else:
        planes = planes[:, 0]
    return np.ascontiguousarray(planes.reshape(layout.output_shape(hw)), dtype=np.float32)


@dataclass(frozen=True)
class IntensityScale:
    """The linear map between the input's intensities and the model's [-1, 1]."""

    low: float
    high: float

    @classmethod
    def from_data(cls, data: np.ndarray, percentiles: tuple[float, float] = (0.1, 99.9)) -> IntensityScale:
        low, high = np.percentile(data, percentiles).astype(np.float64)
        if not high > low:  # zero dynamic range: centre the constant on 0
            half = max(1.0, abs(float(low)) * 1e-3)  # +-1 is lost in rounding for huge values
            low, high = low - half, low + half
        return cls(float(low), float(high))

    # in float64: for a float32 image with a tiny range, 2 / (high - low) overflows float32
    def to_model(self, values: np.ndarray) -> np.ndarray:
        """``values`` in the model's units (float32); refuses outliers that the model's maths cannot hold."""
        mapped = (np.asarray(values, np.float64) - self.low) * (2.0 / (self.high - self.low)) - 1.0
        peak = float(np.max(np.abs(mapped))) if mapped.size else 0.0
        if not peak <= MAX_MODEL_MAGNITUDE:  # NaN too: a range whose span underflows
            raise InvalidInputError(
                f"the image has values far outside its intensity range {self.low:.4g} to {self.high:.4g} "
                f"(mapped to the model's -1 to 1 they reach {peak:.3g}, beyond {MAX_MODEL_MAGNITUDE:.0e}): "
                f"clip the outliers first, e.g. np.clip(image, {self.low:.4g}, {self.high:.4g}), "
                "or give an intensity_range that covers them"
            )
        return mapped.astype(np.float32)

    def from_model(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, np.float64) + 1.0) * ((self.high - self.low) / 2.0) + self.low).astype(np.float32)


def to_rgb(planes: torch.Tensor) -> torch.Tensor:
    """Grey planes ``(N, 1, H, W)`` -> three equal channels; RGB unchanged."""
    return planes.expand(-1, 3, -1, -1) if planes.shape[1] == 1 else planes


def from_rgb(planes: torch.Tensor, channels: int) -> torch.Tensor:
    """Back to ``channels`` (1: the mean of the three)."""
    return planes.mean(dim=1, keepdim=True) if channels == 1 else planes


def pad_amounts(operator, measurement_hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    """Rows and columns to add to the measurement so the image size is a multiple of ``multiple``."""
    result = []
    for axis in (0, 1):
        for extra in range(0, 8 * multiple + 1):
            hw = list(measurement_hw)
            hw[axis] += extra
            if operator.image_hw(tuple(hw))[axis] % multiple == 0:
                result.append(extra)
                break
        else:  # pragma: no cover - every operator here scales sizes by an integer
            raise InvalidInputError(f"cannot pad {measurement_hw} to a multiple of {multiple}")
    return result[0], result[1]


def mirror_pad(planes: torch.Tensor, pad_h: int, pad_w: int) -> torch.Tensor:
    """Half-sample symmetric padding at the bottom and right (the operators' boundary rule)."""
    if pad_h == 0 and pad_w == 0:
        return planes
    h, w = planes.shape[-2:]
    rows = mirror_index(0, h + pad_h, h, planes.device)
    cols = mirror_index(0, w + pad_w, w, planes.device)
    return planes.index_select(-2, rows).index_select(-1, cols)


def intensity_scale(planes: np.ndarray, intensity_range: Any) -> IntensityScale:
    """The given ``(low, high)``, or the 0.1-99.9 percentiles of all planes."""
    if intensity_range is None:
        return IntensityScale.from_data(planes)
    try:
        low, high = (float(v) for v in intensity_range)
    except (TypeError, ValueError):
        raise InvalidInputError(f"intensity_range must be two numbers (low, high), got {intensity_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise InvalidInputError(f"intensity_range must be finite with low < high, got {intensity_range!r}")
    if not math.isfinite(2.0 / (high - low)):
        raise InvalidInputError(f"intensity_range spans too little to resolve (high - low = {high - low:g})")
    return IntensityScale(low, high)
