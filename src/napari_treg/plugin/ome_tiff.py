"""Save and open Image layers as OME-TIFF with their geometry and TReg provenance (npe2 writer and reader).

napari's own TIFF writer keeps only the pixels. Here the file carries what makes a result
a scientific record:

- OME-XML (read by Fiji, QuPath, bioformats, ...): the axes (``TZYX`` / ``YXS``) and the
  physical pixel size with its unit;
- a JSON document in a private TIFF tag (:data:`LAYER_TAG`): the napari layer as it was
  (name, scale, translate, rotate, shear, affine, units, axis labels, contrast, colormap)
  and its whole ``metadata``, ``metadata["treg"]`` included.

:func:`napari_get_reader` opens such a file as the same layer; OME-TIFFs without the tag are
left to other readers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInputError
from .layers import plain

#: private TIFF tag (>= 32768) holding the layer's JSON
LAYER_TAG = 65_430
FORMAT = "napari-treg layer 1"
SUFFIXES = (".ome.tif", ".ome.tiff")
#: OME's names for the length units napari layers use most (others stay in the JSON only)
OME_UNITS = {"nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}
STACK_AXES = "TZ"  # OME names of up to two axes in front of the image plane
LayerData = tuple[Any, dict, str]


def layer_record(meta: dict) -> dict:
    """What the JSON stores of a layer's attributes (napari's ``as_layer_data_tuple`` meta)."""
    colormap = meta.get("colormap")
    return plain(
        {
            "format": FORMAT,
            "name": meta.get("name"),
            "rgb": bool(meta.get("rgb", False)),
            "scale": np.asarray(meta.get("scale"), dtype=float).tolist(),
            "translate": np.asarray(meta.get("translate"), dtype=float).tolist(),
            "rotate": np.asarray(meta.get("rotate"), dtype=float).tolist(),
            "shear": np.asarray(meta.get("shear"), dtype=float).tolist(),
            "affine": np.asarray(meta.get("affine"), dtype=float).tolist(),
            "units": [str(unit) for unit in meta.get("units") or ()],
            "axis_labels": list(meta.get("axis_labels") or ()),
            "contrast_limits": meta.get("contrast_limits"),
            "colormap": colormap.get("name") if isinstance(colormap, dict) else getattr(colormap, "name", colormap),
            "metadata": meta.get("metadata") or {},
        }
    )


def ome_metadata(shape: tuple[int, ...], record: dict) -> dict:
    """tifffile's ``metadata`` for OME-XML: axes, physical sizes and units, the layer name."""
    rgb = record["rgb"]
    lead = len(shape) - (3 if rgb else 2)
    if lead > len(STACK_AXES):
        raise InvalidInputError(f"OME-TIFF holds at most {len(STACK_AXES)} stack axes; the layer has {lead}")
    metadata: dict[str, Any] = {"axes": STACK_AXES[len(STACK_AXES) - lead :] + "YX" + ("S" if rgb else "")}
    if record.get("name"):
        metadata["Name"] = record["name"]
    sizes = dict(zip(metadata["axes"], zip(record["scale"], record["units"] or [None] * len(record["scale"]))))
    for axis in "ZYX":
        if axis in sizes and sizes[axis][1] in OME_UNITS:
            metadata[f"PhysicalSize{axis}"] = float(sizes[axis][0])
            metadata[f"PhysicalSize{axis}Unit"] = OME_UNITS[sizes[axis][1]]
    return metadata


def write_ome_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer for one Image layer: ``path`` must end with .ome.tif(f); returns the paths written."""
    import tifffile

    if not str(path).lower().endswith(SUFFIXES):
        path = f"{path}{SUFFIXES[0]}"
    array = np.asarray(data)
    record = layer_record(meta)
    text = json.dumps(record, allow_nan=True)
    tifffile.imwrite(
        path,
        array,
        ome=True,
        photometric="rgb" if record["rgb"] else "minisblack",
        metadata=ome_metadata(array.shape, record),
        extratags=[(LAYER_TAG, "s", 0, text, True)],
    )
    return [str(path)]


def read_layer_record(path: str) -> dict | None:
    """The JSON a file written by :func:`write_ome_tiff` carries, or None."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(LAYER_TAG)
        if tag is None:
            return None
        record = json.loads(tag.value)
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def read_ome_tiff(path: str) -> list[LayerData]:
    """The layer saved in ``path``: pixels, geometry, display and metadata as they were."""
    import tifffile

    paths = path if isinstance(path, list) else [path]
    layers = []
    for one in paths:
        record = read_layer_record(one)
        if record is None:
            raise InvalidInputError(f"{one} was not written by napari-treg (no layer record)")
        data = tifffile.imread(one)
        kwargs = {
            key: record[key]
            for key in (
                "name",
                "rgb",
                "scale",
                "translate",
                "rotate",
                "shear",
                "affine",
                "axis_labels",
                "contrast_limits",
                "colormap",
                "metadata",
            )
            if record.get(key) is not None
        }
        if record.get("units"):
            kwargs["units"] = record["units"]
        if record["rgb"]:
            kwargs.pop("colormap", None)
        layers.append((data, kwargs, "image"))
    return layers


def napari_get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader: files napari-treg wrote (.ome.tif with its layer record); None for any other file."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(str(p).lower().endswith(SUFFIXES) and Path(p).is_file() for p in paths):
        return None
    try:
        if not all(read_layer_record(str(p)) is not None for p in paths):
            return None
    except Exception:  # noqa: BLE001 - not a TIFF we can read: another reader's file
        return None
    return read_ome_tiff
