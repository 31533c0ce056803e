"""Reading a batch output back lazily (napari opens it while the units are still running)."""

from __future__ import annotations

import os

from napari_treg.batch.outputs import ATTRIBUTE
from napari_treg.io.ome_zarr import ome_multiscale


def open_result(path: str | os.PathLike):
    """The restored stack of a zarr batch output as a dask array, and its ``napari_treg`` attributes.

    Planes not yet done read as zeros; nothing is loaded until a plane is displayed or computed.
    """
    import dask.array as da
    import zarr

    node = zarr.open(os.fspath(path), mode="r")
    attrs = dict(node.attrs)
    if isinstance(node, zarr.Array):
        return da.from_zarr(node), attrs.get(ATTRIBUTE, {})
    image = ome_multiscale(attrs)
    if image is None:
        raise ValueError(f"{os.fspath(path)!r} is neither a zarr array nor an OME-Zarr image")
    return da.from_zarr(node[image["datasets"][0]["path"]]), attrs.get(ATTRIBUTE, {})
