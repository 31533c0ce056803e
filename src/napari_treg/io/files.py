"""Reading and writing image files for the command line.

Supported formats
-----------------
- ``.tif`` / ``.tiff`` (tifffile): any shape and dtype, written unchanged
  (float results stay float32).
- ``.npy`` (NumPy): any shape and dtype, written unchanged.
- ``.png`` / ``.jpg`` / ``.jpeg`` (Pillow, through imageio for writing): one 2D grey
  or ``(H, W, 3)`` RGB (or RGBA) image in 8 bits (PNG also 16-bit grey). An alpha
  channel is dropped on reading, and on writing JPEG. On reading, every colour mode
  Pillow reports (CMYK, YCbCr, LAB, HSV, palette, premultiplied alpha) is converted
  to RGB (CMYK through its embedded ICC profile when it has one); grey modes stay
  grey; a mode Pillow cannot convert, or an animation, is refused by name.

Only regular files are read: a FIFO, socket or device (which would block, or never
end) is refused before it is opened.

Float to PNG/JPEG
-----------------
``restore`` and ``degrade`` return float32 in the input's intensity scale, so
:func:`write_image` maps floats back to integers by rounding and clipping,
never by stretching the contrast. The integer range comes from ``like`` (the
input image or its dtype) when given:

- ``like`` is uint8 (or another integer type whose range fits 0..255):
  round and clip to 0..255, uint8;
- ``like`` is uint16 (or any wider integer type): round and clip to 0..65535, uint16;
- ``like`` is a float array whose values lie in [0, 1]: multiply by 255,
  round and clip to 0..255, uint8.

Without a usable ``like`` the array's own maximum decides: at most 1 -> the
[0, 1] rule, at most 255 -> uint8, otherwise uint16 (values above 65535 clip).
Negative values always clip to 0. JPEG and colour PNG hold 8 bits only: 16-bit
values are divided by 257 (65535 -> 255) before writing.

Writing is atomic: the data goes to a temporary file beside the target and is
moved into place only when complete, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import math
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_treg.errors import InvalidInputError

if TYPE_CHECKING:
    from napari_treg.imaging.noise import NoiseDefaults

TIFF = (".tif", ".tiff")
PICTURE = (".png", ".jpg", ".jpeg")
NUMPY = (".npy",)
SUPPORTED = TIFF + PICTURE + NUMPY

PathLike = str | os.PathLike


def file_format(path: PathLike) -> str:
    """The lower-case extension of ``path``; raises InvalidInputError if unsupported."""
    ext = Path(path).suffix.lower()
    if ext not in SUPPORTED:
        raise InvalidInputError(
            f"unsupported file type {ext or '(no extension)'!r} for {os.fspath(path)!r}; "
            f"use one of {', '.join(SUPPORTED)}"
        )
    return ext


def check_output_path(path: PathLike) -> Path:
    """Validate an output path before any work is done (extension, existing folder)."""
    file_format(path)
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise InvalidInputError(f"output folder does not exist: {os.fspath(folder)!r}")
    if target.is_dir():
        raise InvalidInputError(f"output path is a folder, not a file: {os.fspath(target)!r}")
    return target


# --------------------------------------------------------------------------- reading

#: what a non-regular file is, by the ``stat`` test that finds it
SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def check_regular_file(path: Path, role: str = "input") -> None:
    """Refuse a folder, FIFO, socket or device as ``role`` (opening a FIFO blocks until a writer comes)."""
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise InvalidInputError(f"{role} is a folder, not a file: {os.fspath(path)!r}")
    kind = next((name for test, name in SPECIAL_FILES if test(mode)), None if stat.S_ISREG(mode) else "not a file")
    if kind is not None:
        raise InvalidInputError(
            f"{role} {os.fspath(path)!r} is {kind}, not a regular file: save the image to a file and pass that"
        )


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


#: Pillow modes read as they are (grey, 1-bit, 16/32-bit integer, float)
GREY_MODES = ("1", "L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
#: Pillow modes of grey with alpha: the alpha is dropped
GREY_ALPHA_MODES = ("LA", "La")
#: Pillow modes converted to RGB (alpha dropped; CMYK, YCbCr, LAB, HSV and palettes converted, not reinterpreted)
COLOUR_MODES = ("RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "P", "PA")


def _read_picture(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            raise ValueError(f"it holds {frames} frames (an animation); save the frame you want as one image")
        return picture_pixels(image)


def picture_pixels(image) -> np.ndarray:
    """A Pillow image as a grey ``(H, W)`` or RGB ``(H, W, 3)`` array (see the module docstring)."""
    mode = image.mode
    if mode in GREY_MODES:
        array = np.asarray(image)
        return array.astype(array.dtype.newbyteorder("=")) if not array.dtype.isnative else array
    if mode in GREY_ALPHA_MODES:
        return np.asarray(image.convert("LA"))[..., 0]
    if mode == "CMYK" and image.info.get("icc_profile"):
        return _cmyk_by_profile(image)
    if mode in COLOUR_MODES:
        return np.asarray(image.convert("RGB"))
    raise ValueError(
        f"its colour mode {mode!r} is not one napari-treg reads (grey {', '.join(GREY_MODES)} or colour "
        f"{', '.join(COLOUR_MODES)}); convert it to RGB or grey first"
    )


def _cmyk_by_profile(image) -> np.ndarray:
    """CMYK -> sRGB through the file's embedded ICC profile (Pillow's plain formula if the profile is unusable)."""
    from io import BytesIO

    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(BytesIO(image.info["icc_profile"]))
        rgb = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        rgb = None
    return np.asarray(rgb if rgb is not None else image.convert("RGB"))


def _read_numpy(path: Path) -> np.ndarray:
    """A ``.npy`` file, refused when its data is shorter than its header promises (truncated)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
        promised = math.prod(shape) * dtype.itemsize
        held = os.fstat(handle.fileno()).st_size - handle.tell()
        if held < promised:
            raise ValueError(f"the file is truncated: its header promises {promised} bytes of data, it holds {held}")
        handle.seek(0)
        return np.load(handle, allow_pickle=False)


_READERS: dict[str, Callable[[Path], np.ndarray]] = {
    **{ext: _read_tiff for ext in TIFF},
    **{ext: _read_picture for ext in PICTURE},
    **{ext: _read_numpy for ext in NUMPY},
}


def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as a NumPy array (dtype and shape as stored).

    Raises InvalidInputError for a missing file, an unsupported extension or
    a file that cannot be decoded.
    """
    ext = file_format(path)
    source = Path(path)
    if not source.exists():
        raise InvalidInputError(f"input file not found: {os.fspath(source)!r}")
    check_regular_file(source, "input")
    try:
        image = _READERS[ext](source)
    except MemoryError:  # an allocation failure, not a bad file: memory.py recognises it
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure (EOFError, SyntaxError, ...) is a bad file
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise InvalidInputError(f"cannot read {os.fspath(source)!r}: {reason}") from None
    return np.asarray(image)


# --------------------------------------------------------------------------- writing


def _range_from_like(like: np.ndarray | np.dtype | type | None) -> str | None:
    """'unit', 'uint8' or 'uint16' as implied by the source image, or None."""
    if like is None:
        return None
    dtype = like.dtype if isinstance(like, np.ndarray) else np.dtype(like)
    if dtype == np.bool_:
        return None
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return "uint8" if info.min >= -256 and info.max <= 255 else "uint16"
    if isinstance(like, np.ndarray) and like.size and np.issubdtype(dtype, np.floating):
        finite = like[np.isfinite(like)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            return "unit"
    return None


def _range_from_data(array: np.ndarray) -> str:
    """'unit', 'uint8' or 'uint16', guessed from the array's own maximum."""
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    top = float(finite.max()) if finite.size else 0.0
    if np.issubdtype(array.dtype, np.floating) and top <= 1.0:
        return "unit"
    return "uint8" if top <= 255 else "uint16"


def to_8_or_16_bit(
    array: np.ndarray, like: np.ndarray | np.dtype | type | None = None, *, max_bits: int = 16
) -> np.ndarray:
    """Convert an array to uint8 or uint16 for PNG/JPEG (see the module docstring)."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype in (np.uint8, np.uint16) and like is None:
        out = array
    else:
        kind = _range_from_like(like) or _range_from_data(array)
        values = np.nan_to_num(array.astype(np.float64), nan=0.0)
        if kind == "unit":
            values = values * 255.0
        top = 65535 if kind == "uint16" else 255
        dtype = np.uint16 if kind == "uint16" else np.uint8
        out = np.clip(np.rint(values), 0, top).astype(dtype)
    if out.dtype == np.uint16 and max_bits == 8:
        out = np.rint(out / 257.0).astype(np.uint8)
    return out


def check_can_hold(path: PathLike, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> None:
    """Raise InvalidInputError unless the format of ``path`` can hold an array of ``shape`` and ``dtype``.

    ``.tif`` and ``.npy`` hold any real array; ``.png`` / ``.jpg`` one 2D grey, RGB or RGBA
    image (floats and wide integers are converted by the rule in the module docstring).
    """
    ext = file_format(path)
    if np.dtype(dtype).kind not in "biuf":
        raise InvalidInputError(f"{os.fspath(path)!r} cannot hold {np.dtype(dtype)} data: only real numbers")
    if ext in PICTURE:
        _check_picture_shape(ext, tuple(shape))


def _check_picture_shape(ext: str, shape: tuple[int, ...]) -> None:
    plane = shape[:-1] if len(shape) == 3 and shape[-1] in (1, 3, 4) else shape
    if len(plane) != 2:
        raise InvalidInputError(
            f"{ext} holds one 2D grey, RGB or RGBA image, got shape {shape}; use .tif or .npy for stacks"
        )


def _picture_array(array: np.ndarray, ext: str, like) -> np.ndarray:
    """The 2D grey or (H, W, 3) RGB integer array that a PNG/JPEG file can hold."""
    image = np.asarray(array)
    _check_picture_shape(ext, image.shape)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)  # RGB or RGBA
    if rgb and ext != ".png":
        image = image[..., :3]  # JPEG has no alpha channel
    eight_bit_only = ext != ".png" or rgb  # Pillow writes 16-bit PNG for grey only
    return to_8_or_16_bit(image, like, max_bits=8 if eight_bit_only else 16)


def _write_tiff(path: Path, array: np.ndarray) -> None:
    import tifffile

    tifffile.imwrite(path, array)


def _write_png(path: Path, array: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, array, extension=".png")


def _write_jpeg(path: Path, array: np.ndarray) -> None:
    import imageio.v3 as iio

    iio.imwrite(path, array, extension=".jpg", quality=95)


def _write_numpy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


_WRITERS: dict[str, Callable[[Path, np.ndarray], None]] = {
    ".tif": _write_tiff,
    ".tiff": _write_tiff,
    ".png": _write_png,
    ".jpg": _write_jpeg,
    ".jpeg": _write_jpeg,
    ".npy": _write_numpy,
}


def write_image(path: PathLike, array: np.ndarray, *, like: np.ndarray | np.dtype | type | None = None) -> Path:
    """Write ``array`` to ``path`` atomically; returns the path written.

    ``.tif`` and ``.npy`` keep the array's dtype and shape. ``.png`` and
    ``.jpg`` get uint8 (or 16-bit grey PNG) converted by the rule in the module
    docstring, with ``like`` (the source image or its dtype) giving the range.
    """
    from napari_treg.solver.divergence import check_finite  # imports torch: only when writing

    ext = file_format(path)
    target = check_output_path(path)
    data = np.asarray(array)
    check_finite(data, f"the image to write to {os.fspath(path)!r}", advice="nothing was written")
    if ext in PICTURE:
        data = _picture_array(data, ext, like)
    write_atomically(target, lambda temp: _WRITERS[ext](temp, data))
    return target


def write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write(temp)`` a hidden temporary file beside ``target``, then rename it into place.

    A failure (a full disk, Ctrl-C) removes the temporary file and leaves an existing ``target`` as it was.
    """
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        write(temp)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# -- the files beside an output -----------------------------------------------------------------


#: an ensemble's maps, in the order they are written beside its mean as ``<stem>.<map><suffix>``
def companion(output: str | os.PathLike, name: str) -> Path:
    """The file next to ``output`` that holds the map ``name``: ``cells.tif`` -> ``cells.std.tif``."""
    path = Path(output)
    return path.with_name(f"{path.stem}.{name}{path.suffix}")


#: OME length units in micrometres
OME_MICROMETRES = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def read_voxel_size(path: PathLike) -> tuple[float, float, float] | None:
    """The ``(z, y, x)`` voxel size in micrometres of an OME-TIFF (``PhysicalSize*``) or an OME-Zarr image
    (its full-resolution ``scale``, :mod:`napari_treg.io.ome_zarr`), or None if it has none."""
    import xml.etree.ElementTree as ElementTree

    import tifffile

    from napari_treg.io.ome_zarr import is_zarr, ome_zarr_voxel_size

    if is_zarr(path):
        return ome_zarr_voxel_size(path)
    if file_format(path) not in (".tif", ".tiff"):
        return None
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        return None
    pixels = next((e for e in ElementTree.fromstring(xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return None
    sizes = []
    for axis in "ZYX":
        size = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if size is None or unit not in OME_MICROMETRES:
            return None
        sizes.append(float(size) * OME_MICROMETRES[unit])
    return (sizes[0], sizes[1], sizes[2])


# -- camera values recorded in a file --------------------------------------------------------------


def read_noise_defaults(path: PathLike) -> NoiseDefaults | None:
    """The camera gain and offset an OME-TIFF records, as the defaults of a Poisson-Gaussian model.

    Read from the first image's channels: each channel's ``DetectorSettings`` ``Gain`` / ``Offset``
    (the acquisition's), else those of the ``Detector`` it refers to (the instrument's). A value is used
    only when every channel that records one records the same. None when the file is not an OME-TIFF,
    or records neither. The gain is taken as the intensity of one photon in the file's units (docs/api.md).
    """
    import xml.etree.ElementTree as ElementTree

    import tifffile

    from napari_treg.imaging.noise import NoiseDefaults  # imports torch: only when asked

    if file_format(path) not in TIFF:
        return None
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:  # unreadable metadata records nothing: the model is estimated
        return None
    detectors = {element.get("ID"): element for element in root.iter() if _local(element.tag) == "Detector"}
    image = next((element for element in root.iter() if _local(element.tag) == "Image"), None)
    channels = [] if image is None else [e for e in image.iter() if _local(e.tag) == "Channel"]
    values: dict[str, dict[float, str]] = {"Gain": {}, "Offset": {}}
    for index, channel in enumerate(channels or [None]):
        settings = None if channel is None else next((e for e in channel if _local(e.tag) == "DetectorSettings"), None)
        detector = detectors.get(settings.get("ID")) if settings is not None else None
        if detector is None and len(detectors) == 1:
            detector = next(iter(detectors.values()))
        for name in values:
            for element, where in ((settings, "DetectorSettings"), (detector, "Detector")):
                number = _ome_number(element, name)
                if number is not None and (name != "Gain" or number > 0):  # a gain of 0 or less is no gain
                    values[name].setdefault(number, f"{where} {name}" + (f" of channel {index}" if channels else ""))
                    break
    recorded = {name: next(iter(found)) for name, found in values.items() if len(found) == 1}
    if not recorded:
        return None
    said = ", ".join(values[name][number] for name, number in recorded.items())
    return NoiseDefaults(
        gain=recorded.get("Gain"), offset=recorded.get("Offset"), source=f"OME metadata ({said}) of {Path(path).name}"
    )


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _ome_number(element: Any, name: str) -> float | None:
    """The finite number of attribute ``name`` of ``element`` (None when absent, empty or not a number)."""
    if element is None:
        return None
    try:
        number = float(element.get(name, ""))
    except ValueError:
        return None
    return number if math.isfinite(number) else None
