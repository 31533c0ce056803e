"""Tiled restoration: images of any size, restored tile by tile and blended without seams.

Stable Diffusion 1.5 works best at its native 512x512 and its memory grows with the
image area. :func:`solve_in_tiles` cuts the measurement into overlapping tiles (all of
one size), solves them with the engine (:meth:`Restorer.solve_planes`) and blends the results
with raised-cosine weights that form a partition of unity in every overlap, so the
seams are invisible; time grows linearly with the number of tiles and memory stays
that of one batch of tiles.

- Tile size and overlap are given in *restored-image* pixels. For super-resolution
  by ``f`` the measurement is cut into tiles ``tile_size // f`` pixels wide that
  overlap by ``ceil(tile_overlap / f)``; the restored tiles are ``f`` times larger.
- Size-agnostic operators (blurs, super-resolution, denoising) are used as they are
  for every tile, so the tiles are the planes of one stack and ``batch_size`` tiles
  are solved together. :class:`~napari_treg.operators.Inpainting` needs its mask cut
  per tile (:func:`tile_operator`), so each tile position is one solve call.
  Any operator may define ``cropped(rows, cols)`` to say how it is cut.
- One intensity scale for the whole image: the engine maps the whole image to model
  units before it is cut.
- Blurs see their tiles with mirrored borders: choose an overlap of at least the
  blur's radius, so that the tile borders carry (almost) no weight.
- Tile ``k`` (tile-major, then stack plane) is solved with seed ``seed + k``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from napari_treg.engine.run_info import TilingInfo
from napari_treg.errors import InvalidInputError
from napari_treg.imaging import layout as imaging
from napari_treg.operators import LinearOperator

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
            (h, w),
            tile_hw,
            overlap,
            scale,
            tuple(tile_starts(h, tile_hw[0], min(overlap, tile_hw[0] - 1))),
            tuple(tile_starts(w, tile_hw[1], min(overlap, tile_hw[1] - 1))),
        )

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    def describe(self, tile_size: int, tile_overlap: int, calls: int) -> TilingInfo:
        """How the image was cut (and in how many solve calls), for provenance (``info["tiling"]``)."""
        return TilingInfo(self.count, calls, int(tile_size), int(tile_overlap), self.tile_hw, self.overlap)

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


# -- solving in tiles ------------------------------------------------------------------------

#: ``solve(units, operator, offset, place)``: restored units ``(k, C, th', tw')`` (input units) of
#: measurement units ``(k, C, th, tw)`` numbered ``offset ..``; ``place`` puts a preview in the whole image
Solve = Callable[[np.ndarray, LinearOperator, int, Callable], np.ndarray]


def solve_in_tiles(
    solve: Solve, planes: np.ndarray, operator: LinearOperator, plan: Tiling, layout: imaging.Layout
) -> np.ndarray:
    """Cut the planes ``(N, C, h, w)`` into the plan's tiles, solve them, and blend: ``(N, C, H, W)``.

    Units are numbered tile-major, then plane (unit ``tile * N + plane``); the engine seeds unit
    ``k`` with ``seed + k``.
    """
    canvas = Canvas(plan, layout, len(planes))
    offset = 0
    for tile_op, stack in tile_calls(operator, planes, plan.slices()):
        canvas.add(solve(stack, tile_op, offset, canvas.preview), offset)
        offset += len(stack)
    return canvas.result()


def call_sizes(operator: LinearOperator, num_planes: int, plan: Tiling) -> list[int]:
    """Units of each solve call of :func:`solve_in_tiles` (one call, or one per tile for masks)."""
    if is_size_agnostic(operator):
        return [num_planes * plan.count]
    return [num_planes] * plan.count


def tile_calls(operator, planes, slices) -> list[tuple[LinearOperator, np.ndarray]]:
    """``(operator, tiles)`` per solve call; tiles tile-major then plane, ``(k, C, th, tw)``."""
    if is_size_agnostic(operator):
        stack = np.concatenate([planes[:, :, r, c] for r, c in slices])
        return [(operator, stack)]
    return [(tile_operator(operator, r, c), np.ascontiguousarray(planes[:, :, r, c])) for r, c in slices]


class Canvas:
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

    def preview(self, preview: np.ndarray, tile_number: int) -> np.ndarray | None:
        """The blend so far with ``preview`` (one restored tile, output layout) in place of unit ``tile_number``."""
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
