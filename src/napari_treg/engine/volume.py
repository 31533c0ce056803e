"""Z-stacks solved as one volume: when the operator couples planes (a 3-D PSF, ``VolumeBlur``).

The sampler then holds the whole stack in one batch, so each data-consistency step is one
conjugate-gradient solve over the volume (``solver/cg.py``), while the prior runs per plane in
chunks of ``batch_size`` planes (:class:`~napari_treg.models.chunked.PlaneChunks`). Plane ``k``
keeps seed ``seed + k``. Tiles cut y and x only and keep z whole (a tile is a volume).
"""

from __future__ import annotations

from napari_treg.engine.run_info import VolumeInfo
from napari_treg.errors import InvalidInputError
from napari_treg.imaging.layout import Layout
from napari_treg.operators import LinearOperator


def check_volume(layout: Layout, operator: LinearOperator, tile_size: int | None, tile_overlap: int) -> None:
    """Refuse, before any work, a stack that cannot be solved as one volume by ``operator``."""
    if len(layout.leading) > 1:
        raise InvalidInputError(
            f"{operator!r} restores one z-stack (Z, H, W) or (Z, H, W, 3); got stack axes {layout.leading}: "
            "restore each z-stack on its own"
        )
    check_depth = getattr(operator, "check_depth", None)
    if callable(check_depth):
        check_depth(layout.num_planes)
    reach = int(getattr(operator, "lateral_radius", 0))
    if tile_size is not None and max(layout.hw) > tile_size and tile_overlap < reach:
        raise InvalidInputError(
            f"tile_overlap {tile_overlap} is smaller than the PSF's lateral reach ({reach} px): "
            f"use tile_overlap >= {reach}"
        )


def volume_depth(operator: LinearOperator, layout: Layout) -> int | None:
    """Planes of one volume (the stack's), or None when the operator works plane by plane."""
    return layout.num_planes if operator.couples_planes else None


def volume_info(operator: LinearOperator, layout: Layout, batch_size: int) -> VolumeInfo | None:
    """``info["volume"]``: how the stack was solved as one volume (None when plane by plane)."""
    if not operator.couples_planes:
        return None
    return VolumeInfo(layout.num_planes, min(batch_size, layout.num_planes), getattr(operator, "voxel_size", None))
