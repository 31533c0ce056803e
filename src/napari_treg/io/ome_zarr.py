"""OME-Zarr images: their ``multiscales`` metadata checked, and a 3-D PSF read with its voxel size.

The batch runner reads OME-Zarr sources through :func:`ome_image`; ``--kernel psf.ome.zarr`` reads
a PSF through :func:`read_ome_zarr_psf`, its voxel size from the full-resolution level's
``scale`` (coordinateTransformations) and the axes' units.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_treg.errors import InvalidInputError

ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr array or group (v2 or v3)."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, m)) for m in ZARR_MARKERS)


@dataclass(frozen=True)
class OmeImage:
    """The full-resolution level of an OME-Zarr image, as its ``multiscales`` metadata describes it."""

    path: str
    axes: tuple[dict, ...]
    scale: tuple[float, ...] | None
    translation: tuple[float, ...] | None
    name: str | None


def ome_multiscale(attrs: dict) -> dict | None:
    """The first multiscales entry of OME-Zarr attributes (NGFF 0.4 or 0.5), or None (not checked)."""
    ome = attrs.get("ome")
    multiscales = (ome.get("multiscales") if isinstance(ome, dict) else None) or attrs.get("multiscales")
    return multiscales[0] if isinstance(multiscales, list) and multiscales else None


def ome_image(attrs: dict, where: str, role: str = "source") -> OmeImage:
    """Parse and check OME-Zarr ``multiscales``; InvalidInputError naming the metadata that does not fit.

    ``role``: what the image is, in the messages (``source``, ``PSF``).
    """

    def bad(what: str) -> InvalidInputError:
        return InvalidInputError(f"OME-Zarr {role} {where!r}: malformed multiscales metadata: {what}")

    ome = attrs.get("ome")
    if "multiscales" not in attrs and not (isinstance(ome, dict) and "multiscales" in ome):
        raise InvalidInputError(f"{role} {where!r} is a zarr group but not an OME-Zarr image (no multiscales)")
    multiscales = ome["multiscales"] if isinstance(ome, dict) and "multiscales" in ome else attrs["multiscales"]
    if not isinstance(multiscales, list) or not multiscales or not isinstance(multiscales[0], dict):
        raise bad(f"expected a non-empty list of images, got {short(multiscales)}")
    image = multiscales[0]
    datasets = image.get("datasets")
    if not isinstance(datasets, list) or not datasets or not isinstance(datasets[0], dict):
        raise bad(f"'datasets' must be a non-empty list, got {short(datasets)}")
    path = datasets[0].get("path")
    if not isinstance(path, str) or not path:
        raise bad(f"datasets[0] 'path' must be a name, got {short(path)}")
    axes = image.get("axes")
    if not isinstance(axes, list) or len(axes) < 2:
        raise bad(f"'axes' must list at least 2 axes, got {short(axes)}")
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    if not all(isinstance(a.get("name"), str) for a in axes):
        raise bad(f"every axis needs a name, got {short(axes)}")
    names = [a["name"] for a in axes]
    if len(set(names)) != len(names):
        raise bad(f"axis names repeat: {names}")
    transforms = datasets[0].get("coordinateTransformations", [])
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise bad(f"'coordinateTransformations' must be a list, got {short(transforms)}")
    values = {t.get("type"): t.get(t.get("type")) for t in transforms if t.get("type") in ("scale", "translation")}
    for kind, value in values.items():
        if not isinstance(value, list) or len(value) != len(axes):
            raise bad(f"{kind} must list one number per axis ({len(axes)}), got {short(value)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise bad(f"{kind} must hold finite numbers, got {short(value)}")
    if "scale" in values and not all(v > 0 for v in values["scale"]):
        raise bad(f"scale must be > 0, got {short(values['scale'])}")
    name = image.get("name")
    return OmeImage(
        path=path,
        axes=tuple(axes),
        scale=tuple(float(v) for v in values["scale"]) if "scale" in values else None,
        translation=tuple(float(v) for v in values["translation"]) if "translation" in values else None,
        name=name if isinstance(name, str) else None,
    )


def short(value: Any, limit: int = 80) -> str:
    """``repr`` of a metadata value, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: OME-NGFF length units (and their short forms) in micrometres; an axis without a unit is in micrometres
NGFF_MICROMETRES = {
    "angstrom": 1e-4,
    "nanometer": 1e-3,
    "micrometer": 1.0,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
    "nm": 1e-3,
    "µm": 1.0,
    "um": 1.0,
    "mm": 1e3,
}
PSF_AXES = ("z", "y", "x")


def read_ome_zarr_psf(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """A 3-D PSF ``(Z, Y, X)`` from an OME-Zarr image (or a plain zarr array), and its voxel size.

    The voxel size ``(z, y, x)`` in micrometres comes from the full-resolution level's ``scale``
    and the axes' units (None for a plain array or an image without a scale). Axes other than
    z, y, x (t, c) must have one element. InvalidInputError names what does not fit.
    """
    where = os.fspath(path)
    node, image = open_psf_image(where)
    if image is None:
        return np.asarray(node[...]), None
    names = tuple(axis["name"] for axis in image.axes)
    try:
        array = np.asarray(node[image.path][...])
    except KeyError:
        raise InvalidInputError(f"OME-Zarr PSF {where!r}: the store holds no dataset {image.path!r}") from None
    if array.ndim != len(names):
        raise InvalidInputError(f"OME-Zarr PSF {where!r}: the dataset has {array.ndim} axes, multiscales names {names}")
    extra = {name: size for name, size in zip(names, array.shape) if name not in PSF_AXES and size != 1}
    if extra:
        raise InvalidInputError(f"OME-Zarr PSF {where!r} must be one z-stack; the axes {extra} hold more than one")
    volume = np.transpose(
        array, [names.index(n) for n in names if n not in PSF_AXES] + [names.index(n) for n in PSF_AXES]
    )
    return volume.reshape(volume.shape[-3:]), psf_voxel_size(image, where)


def ome_zarr_voxel_size(path: str | os.PathLike) -> tuple[float, float, float] | None:
    """The ``(z, y, x)`` voxel size in micrometres of an OME-Zarr PSF (metadata only; None: it has none)."""
    where = os.fspath(path)
    _, image = open_psf_image(where)
    return None if image is None else psf_voxel_size(image, where)


def open_psf_image(where: str) -> tuple[Any, OmeImage | None]:
    """The zarr node at ``where`` and its checked OME-Zarr image (None for a plain array)."""
    zarr = _zarr()
    try:
        node = zarr.open(where, mode="r")
    except Exception as error:  # noqa: BLE001 - any parse failure of the store's metadata is bad input
        raise InvalidInputError(f"PSF {where!r}: unreadable zarr metadata ({' '.join(str(error).split())})") from None
    if isinstance(node, zarr.Array):
        return node, None
    image = ome_image(dict(node.attrs), where, role="PSF")
    if not set(PSF_AXES) <= {axis["name"] for axis in image.axes}:
        raise InvalidInputError(
            f"OME-Zarr PSF {where!r} needs the axes z, y and x; it has {[a['name'] for a in image.axes]}"
        )
    return node, image


def psf_voxel_size(image: OmeImage, where: str) -> tuple[float, float, float] | None:
    """The ``(z, y, x)`` voxel size in micrometres of an OME-Zarr image's full-resolution level (None: no scale)."""
    if image.scale is None:
        return None
    sizes = []
    for name in PSF_AXES:
        axis = next(a for a in image.axes if a["name"] == name)
        unit = axis.get("unit") or "micrometer"
        if unit not in NGFF_MICROMETRES:
            raise InvalidInputError(
                f"OME-Zarr PSF {where!r}: axis {name} has the unit {unit!r}; use one of {', '.join(NGFF_MICROMETRES)}"
            )
        sizes.append(image.scale[image.axes.index(axis)] * NGFF_MICROMETRES[unit])
    return (sizes[0], sizes[1], sizes[2])


def _zarr():
    try:
        import zarr
    except ImportError:
        raise InvalidInputError(
            "reading a zarr or OME-Zarr file needs the zarr package: pip install 'napari-treg[batch]'"
        ) from None
    return zarr
