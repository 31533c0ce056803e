"""Tiled restoration: images of any size, restored tile by tile and blended without seams.

Stable Diffusion 1.5 works best at its native 512x512 and its memory grows with the
image area. :func:`restore_tiled` cuts the measurement into overlapping tiles (all of
one size), restores them with :func:`napari_treg.api.restore` and blends the results
with raised-cosine weights that form a partition of unity in every overlap, so the
seams are invisible; time grows linearly with the number of tiles and memory stays
that of one batch of tiles.

- Tile size and overlap are given in *restored-image* pixels. For super-resolution
  by ``f`` the measurement is cut into tiles ``tile_size // f`` pixels wide that
  overlap by ``ceil(tile_overlap / f)``; the restored tiles are ``f`` times larger.
- Size-agnostic operators (blurs, super-resolution, denoising) are used as they are
  for every tile, so the tiles are the planes of one stack and ``batch_size`` tiles
  are solved together. :class:`~napari_treg.operators.Inpainting` needs its mask cut
  per tile (:func:`tile_operator`), so each tile position is one ``restore`` call.
  Any operator may define ``cropped(rows, cols)`` to say how it is cut.
- One intensity scale for the whole image: when :func:`restore` accepts
  ``intensity_range``, the whole image's 0.1-99.9 percentiles are passed to every
  call; otherwise the percentiles of the stack of all tiles (nearly the whole image)
  are used for size-agnostic operators.
- Blurs see their tiles with mirrored borders: choose an overlap of at least the
  blur's radius, so that the tile borders carry (almost) no weight.
- Tile ``k`` (tile-major, then stack plane) is solved with seed ``seed + k``.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import imaging
from .errors import InvalidInputError
from .operators import LinearOperator

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64
MIN_TILE = 8


# -- geometry -----------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of evenly spread tiles of size ``tile`` covering ``[0, length)``, overlapping >= ``overlap``.

    One tile when ``length <= tile``; otherwise the fewest tiles whose neighbours
    overlap by at least ``overlap`` pixels, the first at 0 and the last at the end.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise InvalidInputError(f"tiles need 0 <= overlap < tile size, got tile {tile}, overlap {overlap}")
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def ramp_weights(starts: Sequence[int], tile: int, scale: int = 1) -> list[np.ndarray]:
    """1D blending weights of each tile (in output pixels: tile and starts times ``scale``).

    In the overlap of two neighbours the left tile falls as ``cos^2`` while the right
    one rises as ``sin^2`` over the same pixels, so the weights sum to exactly 1.
    The transition spans the middle half of the overlap: the outer quarter next to
    each tile's edge, where a tile sees its mirrored border instead of the true
    neighbourhood, gets (almost) no weight. Image borders get full weight.
    """
    size = tile * scale
    weights = []
    for i, start in enumerate(starts):
        w = np.ones(size, dtype=np.float64)
        if i > 0:
            width = (starts[i - 1] + tile - start) * scale
            w[:width] *= rise(width)
        if i + 1 < len(starts):
            width = (start + tile - starts[i + 1]) * scale
            w[size - width :] *= 1.0 - rise(width)
        weights.append(w)
    return weights


def rise(width: int, margin: float = 0.25) -> np.ndarray:
    """0 to 1 across an overlap of ``width`` pixels: 0 over the first ``margin``, ``sin^2`` over the
    middle, 1 over the last ``margin`` (sampled at pixel centres)."""
    if width <= 0:
        return np.ones(0)
    ramp = max(width * (1 - 2 * margin), 1.0)
    t = np.clip((np.arange(width) + 0.5 - (width - ramp) / 2) / ramp, 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


@dataclass(frozen=True)
class Tiling:
    """Where the tiles lie, in measurement pixels, and how big they come back."""

    measurement_hw: tuple[int, int]
    tile_hw: tuple[int, int]  # measurement pixels
    overlap: int  # measurement pixels
    scale: int  # restored pixels per measurement pixel
    rows: tuple[int, ...]  # tile starts, measurement pixels
    cols: tuple[int, ...]

    @classmethod
    def plan(cls, operator: LinearOperator, measurement_hw: tuple[int, int], tile_size: int, tile_overlap: int):
        scale = operator_scale(operator)
        tile_size, tile_overlap = int(tile_size), int(tile_overlap)
        if tile_size < MIN_TILE:
            raise InvalidInputError(f"tile_size must be at least {MIN_TILE} pixels, got {tile_size}")
        if not 0 <= tile_overlap < tile_size:
            raise InvalidInputError(
                f"tile_overlap must be >= 0 and smaller than tile_size ({tile_size}), got {tile_overlap}"
            )
        tile = max(1, tile_size // scale)
        overlap = min(math.ceil(tile_overlap / scale), tile - 1)
        h, w = measurement_hw
        tile_hw = (min(tile, h), min(tile, w))
        return cls(
            (h, w), tile_hw, overlap, scale,
            tuple(tile_starts(h, tile_hw[0], min(overlap, tile_hw[0] - 1))),
            tuple(tile_starts(w, tile_hw[1], min(overlap, tile_hw[1] - 1))),
        )

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def slices(self) -> list[tuple[slice, slice]]:
        """Measurement-pixel slices of every tile, row-major."""
        th, tw = self.tile_hw
        return [(slice(r, r + th), slice(c, c + tw)) for r in self.rows for c in self.cols]

    def output_slices(self) -> list[tuple[slice, slice]]:
        s = self.scale
        return [(slice(a.start * s, a.stop * s), slice(b.start * s, b.stop * s)) for a, b in self.slices()]

    def weights(self) -> list[np.ndarray]:
        """2D blending weights of every tile in restored pixels, row-major (float64)."""
        wy = ramp_weights(self.rows, self.tile_hw[0], self.scale)
        wx = ramp_weights(self.cols, self.tile_hw[1], self.scale)
        return [np.outer(a, b) for a in wy for b in wx]


def operator_scale(operator: LinearOperator) -> int:
    """Restored pixels per measurement pixel (1, or the super-resolution factor); checked integer."""
    probe = (24, 40)
    out = operator.image_hw(probe)
    scales = {out[0] / probe[0], out[1] / probe[1]}
    if len(scales) != 1 or not float(next(iter(scales))).is_integer() or next(iter(scales)) < 1:
        raise InvalidInputError(f"{operator!r} does not scale image sizes by one integer factor: cannot tile it")
    return int(next(iter(scales)))


# -- operators per tile -------------------------------------------------------------------------


def tile_operator(operator: LinearOperator, rows: slice, cols: slice) -> LinearOperator:
    """The operator for the tile ``[rows, cols]`` of the measurement."""
    cropped = getattr(operator, "cropped", None)
    return cropped(rows, cols) if callable(cropped) else operator


def is_size_agnostic(operator: LinearOperator) -> bool:
    """Whether one operator object serves every tile (all but operators with ``cropped``, like masks)."""
    return not callable(getattr(operator, "cropped", None))


# -- the public function ------------------------------------------------------------------------


def restore_tiled(
    image: np.ndarray,
    operator: LinearOperator,
    *,
    tile_size: int = DEFAULT_TILE,
    tile_overlap: int = DEFAULT_OVERLAP,
    rgb: bool | None = None,
    seed: int = 0,
    progress: Callable | None = None,
    preview_every: int = 0,
    return_info: bool = False,
    restore: Callable | None = None,
    **restore_kwargs,
):
    """Restore ``image`` tile by tile with :func:`napari_treg.api.restore` and blend the tiles.

    Takes every keyword of ``restore`` (``prompt``, ``steps``, ``model``, ``batch_size``,
    ``cancel``, ...) plus ``tile_size`` and ``tile_overlap`` (restored-image pixels).
    An image that fits one tile is restored exactly as ``restore`` would. ``progress``
    counts the steps of all tiles; previews show the blended tiles restored so far.
    ``restore`` may be given to run another implementation (tests).

    Returns what ``restore`` returns; the info dict's ``residual`` is that of the whole
    blended image and ``tiling`` says how it was cut.
    """
    if restore is None:
        from .api import restore
    started = time.perf_counter()
    array = imaging.check_image(image)
    layout = imaging.layout_of(array, rgb)
    operator.check_image_hw(operator.image_hw(layout.hw))
    planes = imaging.to_planes(array, layout)  # (N, C, h, w) in input units
    plan = Tiling.plan(operator, layout.hw, tile_size, tile_overlap)
    scale = imaging.IntensityScale.from_data(planes)
    extra = dict(restore_kwargs)
    if "intensity_range" in _parameters(restore) and extra.get("intensity_range") is None:
        extra["intensity_range"] = (scale.low, scale.high)
    slices = plan.slices()
    canvas = _Canvas(plan, layout, len(planes))
    calls = _calls(operator, planes, slices)
    extra["batch_size"] = _tile_batch_size(restore, restore_kwargs, max(len(stack) for _, stack in calls), plan)
    infos: list[dict] = []
    plane_offset = 0
    for number, (tile_op, stack) in enumerate(calls):
        wrapped = canvas.progress_wrapper(progress, number, len(calls), plane_offset, extra)
        out = restore(
            _as_layer(stack, layout), tile_op, rgb=layout.rgb, seed=int(seed) + plane_offset,
            progress=wrapped, preview_every=preview_every if progress is not None else 0,
            return_info=return_info, **extra,
        )
        if return_info:
            out, info = out
            infos.append(info)
        tiles = imaging.to_planes(out, _tile_layout(out, layout))  # (k, C, th', tw')
        canvas.add(tiles, plane_offset)
        plane_offset += len(stack)
    result = imaging.from_planes(canvas.result(), layout)
    if not return_info:
        return result
    info = dict(infos[-1])
    low, high = info.get("intensity_range", (scale.low, scale.high))
    scale = imaging.IntensityScale(low, high)
    info.update(whole_residual(operator, canvas.result(), planes, scale, restore_kwargs.get("noise")))
    info["seconds"] = time.perf_counter() - started
    info["tiling"] = {
        "tiles": plan.count, "tile_size": int(tile_size), "tile_overlap": int(tile_overlap),
        "measurement_tile": list(plan.tile_hw), "measurement_overlap": plan.overlap,
        "calls": len(calls), "per_call_intensity_range": [i.get("intensity_range") for i in infos],
    }
    info.setdefault("params", {})
    info["params"] = {**info["params"], "tile_size": int(tile_size), "tile_overlap": int(tile_overlap), "seed": seed}
    info["seed"] = seed
    return result, info


def _tile_batch_size(restore: Callable, kwargs: dict, tiles: int, plan: Tiling) -> int:
    """The batch size as a number (the progress and preview bookkeeping needs it)."""
    from . import api

    batch_size = kwargs.get("batch_size", "auto")
    if batch_size != "auto":
        return api._batch_size(batch_size)
    if restore is not api.restore:
        return 1  # another implementation (tests): no model to ask
    prior = api.get_prior(kwargs.get("model", "sd15"), kwargs.get("device", "auto"), kwargs.get("dtype"))
    restored_hw = (plan.tile_hw[0] * plan.scale, plan.tile_hw[1] * plan.scale)
    return api.resolve_batch_size("auto", prior, tiles, restored_hw)


def _parameters(function: Callable) -> set[str]:
    try:
        return set(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return set()


def _calls(operator, planes, slices) -> list[tuple[LinearOperator, np.ndarray]]:
    """``(operator, tiles)`` per restore call; tiles tile-major then plane, ``(k, C, th, tw)``."""
    if is_size_agnostic(operator):
        stack = np.concatenate([planes[:, :, r, c] for r, c in slices])
        return [(operator, stack)]
    return [(tile_operator(operator, r, c), np.ascontiguousarray(planes[:, :, r, c])) for r, c in slices]


def _as_layer(stack: np.ndarray, layout: imaging.Layout) -> np.ndarray:
    """Tiles ``(k, C, h, w)`` as a napari-style stack ``(k, h, w)`` or ``(k, h, w, 3)``."""
    return np.ascontiguousarray(np.moveaxis(stack, 1, -1) if layout.rgb else stack[:, 0])


def _tile_layout(out: np.ndarray, layout: imaging.Layout) -> imaging.Layout:
    return imaging.Layout(tuple(out.shape), out.dtype, layout.rgb)


class _Canvas:
    """Weighted accumulation of restored tiles into the full restored planes."""

    def __init__(self, plan: Tiling, layout: imaging.Layout, num_planes: int):
        self.plan = plan
        self.num_planes = num_planes
        h, w = plan.measurement_hw
        self.out_hw = (h * plan.scale, w * plan.scale)
        self.acc = np.zeros((num_planes, layout.channels, *self.out_hw), dtype=np.float64)
        self.weight = np.zeros(self.out_hw, dtype=np.float64)
        self.plane_weight = np.zeros((num_planes, *self.out_hw), dtype=np.float64)
        self.tile_weights = plan.weights()
        self.out_slices = plan.output_slices()
        self.layout = layout

    def add(self, tiles: np.ndarray, offset: int) -> None:
        """Add restored tiles numbered ``offset ..`` (tile-major: number = tile * planes + plane)."""
        for k, tile in enumerate(tiles):
            index, plane = divmod(offset + k, self.num_planes)
            rows, cols = self.out_slices[index]
            w = self.tile_weights[index]
            self.acc[plane, :, rows, cols] += w * tile
            self.plane_weight[plane, rows, cols] += w

    def result(self) -> np.ndarray:
        """The blended planes ``(N, C, H, W)`` (float32)."""
        weight = np.where(self.plane_weight > 0, self.plane_weight, 1.0)[:, None]
        return (self.acc / weight).astype(np.float32)

    def progress_wrapper(self, progress, number, calls, offset, kwargs):
        """Forward ``progress`` with steps counted over all calls; previews placed in the whole image."""
        if progress is None:
            return None
        steps = int(kwargs.get("steps", 200))
        batch = int(kwargs.get("batch_size", 1))

        def wrapped(done, total, preview=None):
            whole = None
            if preview is not None:
                tile_number = offset + ((done - 1) // steps) * batch
                whole = self._preview(preview, tile_number)
            progress(number * total + done, calls * total, preview=whole)

        return wrapped

    def _preview(self, preview: np.ndarray, tile_number: int) -> np.ndarray | None:
        """The blend so far with ``preview`` (one restored tile, output layout) in its place."""
        index, plane = divmod(tile_number, self.num_planes)
        if index >= len(self.out_slices):
            return None
        tile = np.moveaxis(preview, -1, 0) if self.layout.rgb else preview[None]
        rows, cols = self.out_slices[index]
        acc = self.acc[plane].copy()
        weight = self.plane_weight[plane].copy()
        acc[:, rows, cols] += self.tile_weights[index] * tile
        weight[rows, cols] += self.tile_weights[index]
        blended = (acc / np.where(weight > 0, weight, 1.0)).astype(np.float32)
        return np.moveaxis(blended, 0, -1) if self.layout.rgb else blended[0]


def whole_residual(
    operator, restored: np.ndarray, measured: np.ndarray, scale: imaging.IntensityScale, noise: float | None
) -> dict:
    """The residual entries of ``restore``'s info for the blended image, in model units."""
    from . import api

    x = torch.from_numpy(scale.to_model(restored))
    y = torch.from_numpy(scale.to_model(measured))
    return api.residual_summary(api.residual_sums(operator, x, y), noise)
