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
import math
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from napari_treg.errors import InvalidInputError
from napari_treg.io import files as io
from napari_treg.plugin.layers import plain
from napari_treg.plugin.ome_record import layer_kwargs, restored_dtype, restored_shape

#: private TIFF tag (>= 32768) holding the layer's JSON
LAYER_TAG = 65_430
FORMAT = "napari-treg layer 1"
SUFFIXES = (".ome.tif", ".ome.tiff")
#: OME's names for the length units napari layers use most (others stay in the JSON only)
OME_UNITS = {"nanometer": "nm", "micrometer": "µm", "millimeter": "mm", "centimeter": "cm", "meter": "m"}
STACK_AXES = "TZ"  # OME names of up to two axes in front of the image plane
LayerData = tuple[Any, dict, str]
#: the pixel types OME-XML names (bit, int8 .. uint32, float, double, complex, double-complex)
OME_DTYPES = frozenset(
    np.dtype(t)
    for t in (np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.float32, np.float64)
    + (np.complex64, np.complex128)
)


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


def xml_text(text: str) -> str:
    """``text`` without what XML 1.0 cannot hold (control characters, lone surrogates): they become spaces."""
    return "".join(char if _xml_char(char) else " " for char in text).strip()


def _xml_char(char: str) -> bool:
    code = ord(char)
    return code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF


def physical_size(value: Any) -> float | None:
    """A pixel size OME accepts (finite, > 0), or None."""
    try:
        size = float(value)
    except (TypeError, ValueError):
        return None
    return size if math.isfinite(size) and size > 0 else None


def ome_array(array: np.ndarray) -> np.ndarray:
    """``array`` in a pixel type OME-TIFF holds, converted exactly; InvalidInputError before writing otherwise.

    float16 becomes float32; int64 / uint64 become int32 / uint32 when their values fit, else
    float64 when every value is an integer float64 holds exactly (up to 2**53).
    """
    dtype = array.dtype
    if dtype in OME_DTYPES:
        return array
    if dtype == np.float16:
        return array.astype(np.float32)
    if dtype.kind in "iu" and dtype.itemsize == 8:
        narrow = np.dtype(np.int32 if dtype.kind == "i" else np.uint32)
        info = np.iinfo(narrow)
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if info.min <= low and high <= info.max:
            return array.astype(narrow)
        if max(abs(low), abs(high)) <= 2**53:
            return array.astype(np.float64)
        peak = high if abs(high) >= abs(low) else low
        raise InvalidInputError(
            f"OME-TIFF cannot hold this {dtype} layer exactly: its values reach {peak}, beyond 2**53; "
            "nothing was written. Save it in another format (e.g. .npy), or rescale it"
        )
    raise InvalidInputError(
        f"OME-TIFF cannot hold {dtype} pixels (it holds {', '.join(sorted(str(t) for t in OME_DTYPES))}); "
        "nothing was written"
    )


def ome_metadata(shape: tuple[int, ...], record: dict) -> dict:
    """tifffile's ``metadata`` for OME-XML: axes, physical sizes and units, the layer name."""
    rgb = record["rgb"]
    lead = len(shape) - (3 if rgb else 2)
    if lead > len(STACK_AXES):
        raise InvalidInputError(f"OME-TIFF holds at most {len(STACK_AXES)} stack axes; the layer has {lead}")
    metadata: dict[str, Any] = {"axes": STACK_AXES[len(STACK_AXES) - lead :] + "YX" + ("S" if rgb else "")}
    if isinstance(record.get("name"), str) and xml_text(record["name"]):
        metadata["Name"] = xml_text(record["name"])
    sizes = dict(zip(metadata["axes"], zip(record["scale"], record["units"] or [None] * len(record["scale"]))))
    for axis in "ZYX":
        size = physical_size(sizes[axis][0]) if axis in sizes else None
        if size is not None and sizes[axis][1] in OME_UNITS:  # a scale <= 0 stays in the layer record only
            metadata[f"PhysicalSize{axis}"] = size
            metadata[f"PhysicalSize{axis}Unit"] = OME_UNITS[sizes[axis][1]]
    return metadata


def write_ome_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """npe2 writer for one Image layer: ``path`` must end with .ome.tif(f); returns the paths written."""
    import tifffile

    if not str(path).lower().endswith(SUFFIXES):
        path = f"{path}{SUFFIXES[0]}"
    if isinstance(data, (list, tuple)):
        raise InvalidInputError("a multiscale layer cannot be saved as one OME-TIFF: save its full-resolution level")
    source = np.asarray(data)
    array = ome_array(source)
    record = layer_record(meta)
    record["shape"] = list(array.shape)  # tifffile drops axes of length 1 on reading; the reader puts them back
    if array.dtype != source.dtype:
        record["dtype"] = str(source.dtype)  # the reader converts back
    text = json.dumps(record, allow_nan=True)
    metadata = ome_metadata(array.shape, record)
    options = {"photometric": "rgb" if record["rgb"] else "minisblack", "metadata": metadata}
    io.write_atomically(
        Path(path),
        lambda temp: tifffile.imwrite(temp, array, ome=True, extratags=[(LAYER_TAG, "s", 0, text, True)], **options),
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
    """The layer saved in ``path``: pixels, geometry, display and metadata as they were.

    What of the record does not fit the pixels is left out with a warning (see
    :mod:`.ome_record`); a record that cannot be parsed at all leaves the pixels alone.
    """
    paths = path if isinstance(path, list) else [path]
    layers = []
    for one in paths:
        try:
            record = read_layer_record(one)
        except Exception as error:  # noqa: BLE001 - a damaged record must not hide the pixels
            warnings.warn(f"{one}: its layer record cannot be read ({type(error).__name__}); opening the pixels only")
            record = {}
        if record is None:
            raise InvalidInputError(f"{one} was not written by napari-treg (no layer record)")
        data = restored_dtype(record, restored_shape(record, read_pixels(one)))
        layers.append((data, layer_kwargs(record, data, str(one)), "image"))
    return layers


def read_pixels(path: str) -> np.ndarray:
    """The pixels of ``path``; InvalidInputError naming the file when tifffile cannot decode them or finds none."""
    import tifffile

    try:
        pixels = np.asarray(tifffile.imread(path))
    except MemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - any decoder failure is a damaged file
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise InvalidInputError(f"cannot read the pixels of {path}: {reason}") from None
    if pixels.size == 0:  # a damaged header can give an axis of length 0: no layer can show it
        raise InvalidInputError(f"{path} holds no pixels (shape {pixels.shape}): the file is damaged")
    return pixels


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
