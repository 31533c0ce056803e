"""A small OME-Zarr image written in a test's folder (zarr and ome-zarr's metadata writer)."""

from __future__ import annotations

import numpy as np


def ome_zarr_psf(path, psf, scale, axes="zyx", unit="micrometer"):
    """An OME-Zarr image ``path`` holding ``psf`` (axes named by ``axes``), written with ome-zarr's metadata writer."""
    import zarr
    from ome_zarr.writer import write_multiscales_metadata

    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", data=np.asarray(psf, np.float32))
    kinds = {"c": "channel", "t": "time"}
    axes_meta = [
        {"name": n, "type": kinds.get(n, "space"), **({"unit": unit} if unit and n in "zyx" else {})} for n in axes
    ]
    transforms = [{"type": "scale", "scale": list(scale)}]
    write_multiscales_metadata(group, datasets=[{"path": "0", "coordinateTransformations": transforms}], axes=axes_meta)
    return path
