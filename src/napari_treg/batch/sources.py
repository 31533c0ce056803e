"""What a batch run restores: a folder (or glob) of image files, or the planes of an array.

A :class:`FileSource` has one unit per file, read with :func:`napari_treg.io.files.read_image`
and restored like ``napari-treg restore`` restores that file (its own intensity range,
seed ``seed``). An :class:`ArraySource` (a zarr array, an OME-Zarr image, a dask or NumPy
array, e.g. a napari layer's data) has one unit per plane of its leading axes; plane ``k``
(C order) gets seed ``seed + k`` and the whole array's intensity range, as local
``restore`` of the stack would. Sources are pickled to the workers, which read their own
units: the client never loads the data.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_treg.errors import InvalidInputError
from napari_treg.imaging import layout as imaging
from napari_treg.io import files as io
from napari_treg.io.ome_zarr import is_zarr, ome_image

SPATIAL = ("y", "x")


@dataclass(frozen=True)
class Unit:
    """One piece of work: a file, or one plane (``index`` over the leading axes) of an array."""

    key: str  # file name, or the plane index joined with dots: unique, safe as a file name
    name: str  # shown to people: the file name, or e.g. "t=3, z=0"
    plane: int  # offset of the seed: 0 for a file, the C-order plane number for an array
    index: tuple[int, ...] = ()
    path: str | None = None


@dataclass(frozen=True)
class FileSource:
    """Image files, one unit each."""

    paths: tuple[str, ...]

    def units(self) -> list[Unit]:
        return [Unit(key=Path(p).name, name=Path(p).name, plane=0, path=p) for p in self.paths]

    def read(self, unit: Unit) -> np.ndarray:
        return io.read_image(unit.path)

    def noise_defaults(self, unit: Unit) -> Any:
        """The camera gain and offset the unit's file records (:func:`napari_treg.io.files.read_noise_defaults`)."""
        return io.read_noise_defaults(unit.path)

    def unit_source(self, unit: Unit) -> FileSource:
        """What a task needs to read ``unit``: its own path."""
        return FileSource((unit.path,))

    def describe(self) -> dict[str, Any]:
        return {"kind": "files", "files": [Path(p).name for p in self.paths]}


@dataclass(frozen=True)
class ArraySource:
    """The planes of an array-like (zarr, dask or NumPy) with shape ``(*leading, H, W[, 3])``."""

    array: Any
    layout: imaging.Layout
    axes: tuple[dict, ...] | None = None  # OME-Zarr axes, when known
    scale: tuple[float, ...] | None = None  # OME-Zarr pixel sizes per axis
    translation: tuple[float, ...] | None = None
    origin: str = "array"
    dimension_names: tuple[str, ...] | None = field(default=None)
    name: str | None = None  # the OME-Zarr image's name, kept in the output

    @property
    def axis_names(self) -> tuple[str, ...] | None:
        if self.axes is not None:
            return tuple(axis["name"] for axis in self.axes)
        return self.dimension_names

    def units(self) -> list[Unit]:
        names = self.axis_names
        units = []
        for plane, index in enumerate(np.ndindex(*self.layout.leading)):
            label = ", ".join(f"{n}={i}" for n, i in zip(names, index)) if names else ", ".join(map(str, index))
            units.append(Unit(key=".".join(map(str, index)) or "0", name=label or "plane", plane=plane, index=index))
        return units

    def read(self, unit: Unit) -> np.ndarray:
        return np.asarray(self.array[unit.index] if unit.index else self.array)

    def unit_source(self, unit: Unit) -> ArraySource | PlaneSource:
        """What a task needs to read ``unit``: a zarr array reopens its store; other arrays send the plane."""
        if type(self.array).__module__.startswith("zarr"):
            return self
        part = self.array[unit.index] if unit.index else self.array
        if hasattr(part, "dask"):
            import dask

            (part,) = dask.optimize(part)  # only the tasks of this plane
        else:
            part = np.asarray(part)
        return PlaneSource(part)

    def as_dask(self):
        """The whole array as a dask array (for the intensity range), chunked one plane per unit."""
        import dask.array as da

        array = self.array if isinstance(self.array, da.Array) else da.from_array(self.array, chunks=self.plane_chunks)
        return array[..., :3] if self.layout.alpha_dropped else array

    @property
    def plane_chunks(self) -> tuple[int, ...]:
        return (1,) * len(self.layout.leading) + tuple(self.array.shape[len(self.layout.leading) :])

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "array",
            "origin": self.origin,
            "shape": list(self.array.shape),
            "dtype": str(np.dtype(self.array.dtype)),
            "rgb": self.layout.rgb,
        }


@dataclass(frozen=True)
class PlaneSource:
    """One plane of an in-memory or dask array, sent with its task."""

    data: Any

    def read(self, unit: Unit) -> np.ndarray:
        part = self.data.compute(scheduler="synchronous") if hasattr(self.data, "dask") else self.data
        return np.asarray(part)


def open_source(source: Any, rgb: bool | None = None) -> FileSource | ArraySource:
    """A source from a folder, glob, file, zarr/OME-Zarr path, or an array; InvalidInputError if none fits."""
    if isinstance(source, (str, os.PathLike)):
        return _source_from_path(os.fspath(source), rgb)
    if hasattr(source, "shape") and hasattr(source, "dtype") and hasattr(source, "__getitem__"):
        return array_source(source, rgb, origin=type(source).__module__.split(".")[0])
    raise InvalidInputError(
        f"source must be a folder, a glob of image files, a zarr path or an array, got {type(source).__name__}"
    )


def _source_from_path(path: str, rgb: bool | None) -> FileSource | ArraySource:
    source = _files_or_zarr(path, rgb)
    if isinstance(source, FileSource):
        names = [Path(p).name for p in source.paths]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise InvalidInputError(f"source {path!r} has files with the same name in different folders: {twice[:3]}")
    return source


def _files_or_zarr(path: str, rgb: bool | None) -> FileSource | ArraySource:
    if is_zarr(path):
        return zarr_source(path, rgb)
    if os.path.isdir(path):
        files = [str(p) for p in sorted(Path(path).iterdir()) if p.is_file() and p.suffix.lower() in io.SUPPORTED]
        if not files:
            raise InvalidInputError(f"source folder {path!r} holds no image files ({', '.join(io.SUPPORTED)})")
        return FileSource(tuple(files))
    if os.path.isfile(path):
        io.file_format(path)
        return FileSource((path,))
    files = sorted(p for p in glob.glob(path) if os.path.isfile(p) and Path(p).suffix.lower() in io.SUPPORTED)
    if not files:
        raise InvalidInputError(f"source {path!r} is no folder, file, zarr store or glob matching image files")
    return FileSource(tuple(files))


def zarr_source(path: str, rgb: bool | None) -> ArraySource:
    """A zarr array, or the full-resolution level of an OME-Zarr image (its axes, pixel sizes and name kept)."""
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as error:  # noqa: BLE001 - any parse failure of the store's metadata is bad input
        raise InvalidInputError(f"source {path!r}: unreadable zarr metadata ({' '.join(str(error).split())})") from None
    if isinstance(node, zarr.Array):
        names = getattr(node.metadata, "dimension_names", None)
        return array_source(node, rgb, origin="zarr", dimension_names=tuple(names) if names else None)
    image = ome_image(dict(node.attrs), path)
    if tuple(a["name"] for a in image.axes[-2:]) != SPATIAL:
        raise InvalidInputError(
            f"OME-Zarr source {path!r} must end with the axes y, x; got {[a['name'] for a in image.axes]}"
        )
    try:
        array = node[image.path]
    except KeyError:
        raise InvalidInputError(
            f"OME-Zarr source {path!r}: multiscales names the dataset {image.path!r}, which the store does not hold"
        ) from None
    if not isinstance(array, zarr.Array) or array.ndim != len(image.axes):
        raise InvalidInputError(
            f"OME-Zarr source {path!r}: dataset {image.path!r} is not an array with the {len(image.axes)} axes "
            "that multiscales names"
        )
    return array_source(
        array,
        False,
        origin="ome-zarr",
        axes=image.axes,
        scale=image.scale,
        translation=image.translation,
        name=image.name or Path(path.rstrip("/\\")).name.split(".")[0] or None,
    )


def array_source(array: Any, rgb: bool | None, **details: Any) -> ArraySource:
    """Check an array-like's shape and dtype (without reading it) and wrap it."""
    shape = tuple(int(n) for n in array.shape)
    imaging.check_image(np.zeros([min(n, 2) for n in shape], dtype=array.dtype), name="source")
    probe = np.lib.stride_tricks.as_strided(np.zeros(1, dtype=array.dtype), shape=shape, strides=(0,) * len(shape))
    return ArraySource(array, imaging.layout_of(probe, rgb), **details)
