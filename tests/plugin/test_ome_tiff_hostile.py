"""Hostile layers and files for the OME-TIFF writer and reader (issue 23 points 3, 4 and 14).

The writer: pixel types OME does not name, names XML cannot hold, sizes OME refuses, a full disk.
The reader: records that do not fit their pixels, damaged records and pixels, and (hypothesis)
any JSON in any field of the record.
"""

from __future__ import annotations

import errno
import json
import os
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from napari.layers import Image

from napari_treg.errors import InvalidInputError
from napari_treg.plugin.ome_tiff import FORMAT, LAYER_TAG, napari_get_reader, read_ome_tiff, write_ome_tiff

#: TREG_OME_EXAMPLES=400 searches longer
HYPOTHESIS = settings(
    max_examples=int(os.environ.get("TREG_OME_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _meta(data: np.ndarray, **kwargs) -> dict:
    """What napari hands a writer for an Image layer."""
    return Image(data, **kwargs).as_layer_data_tuple()[1]


def _ome_xml(path) -> str:
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        return tif.ome_metadata


def _read_quietly(path) -> tuple[np.ndarray, dict, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ((data, kwargs, kind),) = read_ome_tiff(str(path))
    assert kind == "image"
    return data, kwargs, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------ writer: pixel types


@pytest.mark.parametrize(
    "dtype, values, stored",
    [
        ("float16", [0.5, -2.0, 65504.0], "float32"),
        ("int64", [-5, 0, 2**31 - 1], "int32"),
        ("uint64", [0, 7, 2**32 - 1], "uint32"),
        ("int64", [-(2**40), 0, 2**53], "float64"),
    ],
)
def test_types_ome_does_not_name_are_stored_exactly_and_reopen_as_they_were(tmp_path, dtype, values, stored):
    data = np.resize(np.array(values, dtype=dtype), (4, 6))
    (path,) = write_ome_tiff(str(tmp_path / "a.ome.tif"), data, _meta(data))
    ET.fromstring(_ome_xml(path))
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dtype == np.dtype(stored)
    back, _, dropped = _read_quietly(path)
    assert back.dtype == data.dtype and np.array_equal(back, data) and not dropped


def test_an_int64_layer_beyond_2_53_is_refused_before_writing_and_an_old_file_kept(tmp_path):
    """Issue 23.3: a raw OmeXmlError left a broken 1-3 kB file behind."""
    target = tmp_path / "a.ome.tif"
    target.write_bytes(b"the old file")
    data = np.array([[0, 2**60]], dtype=np.int64)
    with pytest.raises(InvalidInputError, match="cannot hold this int64 layer exactly.*nothing was written"):
        write_ome_tiff(str(target), data, _meta(np.zeros((1, 2))))
    assert target.read_bytes() == b"the old file" and _files(tmp_path) == ["a.ome.tif"]


def test_pixels_that_are_not_numbers_are_refused_by_type(tmp_path):
    with pytest.raises(InvalidInputError, match="cannot hold <U1 pixels"):
        write_ome_tiff(str(tmp_path / "a.ome.tif"), np.array([["a", "b"]]), _meta(np.zeros((1, 2))))
    assert _files(tmp_path) == []


def test_a_multiscale_layer_is_refused_by_name(tmp_path):
    levels = [np.zeros((8, 8), np.uint8), np.zeros((4, 4), np.uint8)]
    with pytest.raises(InvalidInputError, match="multiscale layer.*full-resolution level"):
        write_ome_tiff(str(tmp_path / "a.ome.tif"), levels, _meta(levels[0]))
    assert _files(tmp_path) == []


# ------------------------------------------------------------------------------ writer: faults


@pytest.mark.parametrize("fault", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_a_full_disk_or_ctrl_c_while_writing_keeps_the_old_file(tmp_path, monkeypatch, fault):
    target = tmp_path / "a.ome.tif"
    data = np.arange(64, dtype=np.uint16).reshape(8, 8)
    write_ome_tiff(str(target), data, _meta(data))
    before = target.read_bytes()

    def half_written(path, array, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"II*\x00 truncated")
        raise fault

    monkeypatch.setattr(tifffile, "imwrite", half_written)
    with pytest.raises(type(fault)):
        write_ome_tiff(str(target), data + 1, _meta(data))
    assert target.read_bytes() == before and _files(tmp_path) == ["a.ome.tif"]


# ------------------------------------------------------------------------------ writer: OME-XML


@HYPOTHESIS
@given(name=st.text(min_size=1, max_size=30))
def test_any_layer_name_gives_well_formed_ome_xml_and_reopens_exactly(tmp_path_factory, name):
    """Issue 23.4: a name with control characters made OME-XML that Fiji, Bio-Formats and QuPath refuse."""
    path = tmp_path_factory.mktemp("names") / "a.ome.tif"
    data = np.zeros((4, 4), np.uint8)
    write_ome_tiff(str(path), data, {**_meta(data), "name": name})
    ET.fromstring(_ome_xml(path).encode("utf-8"))
    _, kwargs, _ = _read_quietly(path)
    assert kwargs["name"] == name


@pytest.mark.parametrize("name, in_xml", [("cells\x00\x1b[1m <b>", "cells  [1m <b>"), ("a\ud800b\ufffe", "a b")])
def test_characters_xml_cannot_hold_become_spaces_in_the_ome_xml(tmp_path, name, in_xml):
    data = np.zeros((4, 4), np.uint8)
    (path,) = write_ome_tiff(str(tmp_path / "a"), data, {**_meta(data), "name": name})
    image = ET.fromstring(_ome_xml(path)).find("{*}Image")
    assert image is not None and image.get("Name") == in_xml
    assert _read_quietly(path)[1]["name"] == name  # the layer record keeps it exactly


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_a_scale_ome_refuses_is_never_a_physical_size(tmp_path, bad):
    data = np.zeros((4, 4), np.uint8)
    meta = {**_meta(data, units="um"), "scale": [bad, 0.25]}
    (path,) = write_ome_tiff(str(tmp_path / "a.ome.tif"), data, meta)
    pixels = ET.fromstring(_ome_xml(path)).find("{*}Image/{*}Pixels")
    assert pixels is not None and pixels.get("PhysicalSizeX") == "0.25" and pixels.get("PhysicalSizeY") is None


# ------------------------------------------------------------------------------ reader: records that do not fit


def _hostile_file(path, data: np.ndarray, record: object, *, raw: str | None = None) -> None:
    text = raw if raw is not None else json.dumps(record)
    tifffile.imwrite(path, data, extratags=[(LAYER_TAG, "s", 0, text, True)])


@pytest.mark.parametrize(
    "key, value, data",
    [
        ("colormap", "a custom colormap of another session", np.zeros((5, 6), np.float32)),
        ("rgb", True, np.zeros((5, 6), np.uint8)),
        ("scale", [1.0, 2.0, 3.0], np.zeros((5, 6), np.uint8)),
        ("scale", [0.0, 1.0], np.zeros((5, 6), np.uint8)),
        ("translate", [float("nan"), 1.0], np.zeros((5, 6), np.uint8)),
        ("contrast_limits", [5, 1], np.zeros((5, 6), np.uint8)),
        ("units", ["parsecs of nothing", "m"], np.zeros((5, 6), np.uint8)),
        ("axis_labels", ["z", "y", "x"], np.zeros((5, 6), np.uint8)),
        ("rotate", [[1.0, 2.0, 3.0]], np.zeros((5, 6), np.uint8)),
        ("affine", "not a matrix", np.zeros((5, 6), np.uint8)),
        ("metadata", ["not", "a", "dict"], np.zeros((5, 6), np.uint8)),
        ("name", {"not": "text"}, np.zeros((5, 6), np.uint8)),
    ],
)
def test_what_does_not_fit_the_pixels_is_dropped_with_a_warning_and_the_pixels_open(tmp_path, key, value, data):
    """Issue 23.14: an unknown colormap name stopped the pixels from opening at all."""
    path = tmp_path / "a.ome.tif"
    _hostile_file(
        path, data, {"format": FORMAT, "name": "kept", key: value} if key != "name" else {"format": FORMAT, key: value}
    )
    assert napari_get_reader(str(path)) is not None
    back, kwargs, dropped = _read_quietly(path)
    assert np.array_equal(back, data)
    assert key not in kwargs or (key == "rgb" and kwargs["rgb"] is False)
    assert len(dropped) == 1 and f"the saved {key} " in dropped[0] and "left out" in dropped[0], dropped
    Image(back, **kwargs)  # napari builds the layer


def test_a_record_that_fits_is_kept_whole(tmp_path):
    data = np.zeros((2, 5, 6), np.float32)
    record = {"format": FORMAT, "name": "n", "scale": [2.0, 1.0, 0.5], "contrast_limits": [0, 3], "colormap": "magma"}
    _hostile_file(tmp_path / "a.ome.tif", data, record)
    _, kwargs, dropped = _read_quietly(tmp_path / "a.ome.tif")
    assert not dropped and {k: kwargs[k] for k in ("name", "scale", "contrast_limits", "colormap")} == {
        k: record[k] for k in ("name", "scale", "contrast_limits", "colormap")
    }


@pytest.mark.parametrize("raw", ['{"format": "napari-treg layer 1", "name": ', "[" * 100_000, '{"format": 1} {}'])
def test_a_damaged_record_leaves_the_file_to_other_readers_and_the_pixels_open(tmp_path, raw):
    path = tmp_path / "a.ome.tif"
    data = np.arange(30, dtype=np.uint8).reshape(5, 6)
    _hostile_file(path, data, None, raw=raw)
    assert napari_get_reader(str(path)) is None
    back, kwargs, dropped = _read_quietly(path)
    assert np.array_equal(back, data) and kwargs == {"rgb": False}
    assert len(dropped) == 1 and "cannot be read" in dropped[0]


def test_damaged_pixels_are_one_clear_error(tmp_path):
    path = tmp_path / "a.ome.tif"
    data = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    write_ome_tiff(str(path), data, _meta(data))
    whole = path.read_bytes()
    strip = whole.find(data[:4].tobytes())
    assert strip > 0
    path.write_bytes(whole[: strip + 100])  # the header and the record survive, the pixels do not
    with pytest.raises(InvalidInputError, match="cannot read the pixels of"):
        read_ome_tiff(str(path))


def test_a_fifo_named_like_an_ome_tiff_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.ome.tif"
    os.mkfifo(fifo)
    assert napari_get_reader(str(fifo)) is None  # an open() would block until a writer came


# ------------------------------------------------------------------------------ reader: any JSON (hypothesis)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
NUMBERS = st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 5), max_size=4)
FIELD = {
    "name": JSON,
    "rgb": JSON,
    "scale": NUMBERS | JSON,
    "translate": NUMBERS | JSON,
    "rotate": NUMBERS | JSON,
    "shear": NUMBERS | JSON,
    "affine": st.lists(NUMBERS, max_size=4) | JSON,
    "units": st.lists(st.sampled_from(["um", "nm", "pixel", "bogus", ""]), max_size=4) | JSON,
    "axis_labels": st.lists(st.text(max_size=3), max_size=4) | JSON,
    "contrast_limits": NUMBERS | JSON,
    "colormap": st.sampled_from(["gray", "viridis", "no such map", ""]) | JSON,
    "metadata": JSON,
    "dtype": st.sampled_from(["float16", "int64", "uint64", "object", "float128"]) | JSON,
    "shape": st.lists(st.integers(-1, 6), max_size=5) | JSON,
}
SHAPES = st.sampled_from([(5, 6), (2, 5, 6), (5, 6, 3), (2, 5, 6, 4), (1, 5, 6, 3)])


@HYPOTHESIS
@given(
    shape=SHAPES,
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.int32]),
    record=st.fixed_dictionaries({}, optional=FIELD),
)
def test_any_record_opens_the_pixels_and_napari_builds_the_layer(tmp_path_factory, shape, dtype, record):
    path = tmp_path_factory.mktemp("records") / "a.ome.tif"
    data = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    _hostile_file(path, data, {**record, "format": FORMAT})
    back, kwargs, _ = _read_quietly(path)
    assert np.array_equal(np.squeeze(back).astype(np.float64), np.squeeze(data).astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = Image(back, **kwargs)
    assert layer.data.shape == back.shape


@pytest.mark.parametrize("shape", [(1, 5, 6), (1, 5, 6, 3), (2, 1, 5, 6), (1, 1, 5, 6)])
def test_axes_of_length_one_come_back_with_the_geometry(tmp_path, shape):
    """tifffile squeezes them away on reading; without them the saved scale no longer fitted."""
    data = np.arange(np.prod(shape), dtype=np.uint8).reshape(shape)
    meta = _meta(data, scale=[0.5] * (len(shape) - (shape[-1] == 3)), rgb=shape[-1] == 3)
    (path,) = write_ome_tiff(str(tmp_path / "a.ome.tif"), data, meta)
    back, kwargs, dropped = _read_quietly(path)
    assert back.shape == shape and np.array_equal(back, data) and not dropped
    assert kwargs["scale"] == list(meta["scale"])


# ------------------------------------------------------------------------------ through napari


def test_napari_opens_a_file_whose_colormap_this_session_does_not_know(make_napari_viewer, tmp_path):
    """Issue 23.14 as a user meets it: File > Open of a result saved with a custom colormap."""
    viewer = make_napari_viewer()
    path = tmp_path / "custom.ome.tif"
    data = np.arange(30, dtype=np.float32).reshape(5, 6)
    _hostile_file(path, data, {"format": FORMAT, "name": "result", "colormap": "lab-custom", "scale": [2.0, 2.0]})
    with pytest.warns(UserWarning, match="the saved colormap 'lab-custom'"):
        (layer,) = viewer.open(str(path), plugin="napari-treg")
    assert np.array_equal(layer.data, data) and layer.name == "result" and list(layer.scale) == [2.0, 2.0]


def test_napari_saves_and_reopens_a_float16_layer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    data = np.linspace(0, 1, 48, dtype=np.float16).reshape(6, 8)
    viewer.add_image(data, name="half", scale=(0.5, 0.5), units="um")
    path = tmp_path / "half.ome.tif"
    assert viewer.layers.save(str(path), selected=True, plugin="napari-treg") == [str(path)]
    (opened,) = viewer.open(str(path), plugin="napari-treg")
    assert opened.data.dtype == np.float16 and np.array_equal(opened.data, data)
    assert 'PhysicalSizeX="0.5"' in _ome_xml(path)


# ------------------------------------------------------------------------------ damaged file bytes (hypothesis)


def _valid_ome_tiff(folder) -> bytes:
    data = np.arange(96, dtype=np.uint16).reshape(2, 6, 8)
    (path,) = write_ome_tiff(str(folder / "valid.ome.tif"), data, _meta(data, name="cells", scale=(2, 0.5, 0.5)))
    return open(path, "rb").read()


@settings(max_examples=int(os.environ.get("TREG_OME_EXAMPLES", "40")), deadline=None)
@example(edits=[(0.75, 0), (0.0078125, 1)])  # a header that reads as 6 x 0 pixels (found by hypothesis)
@given(edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6))
def test_a_damaged_ome_tiff_opens_or_is_one_clear_error(tmp_path_factory, edits):
    """Bytes changed anywhere (header, tags, OME-XML, the layer record, pixels): never a traceback."""
    folder = tmp_path_factory.mktemp("damaged")
    damaged = bytearray(_valid_ome_tiff(folder))
    for where, value in edits:
        damaged[int(where * len(damaged))] = value
    path = folder / "damaged.ome.tif"
    path.write_bytes(bytes(damaged))
    reader = napari_get_reader(str(path))  # never raises: None leaves the file to other readers
    if reader is None:
        return
    try:
        back, kwargs, _ = _read_quietly(path)
    except InvalidInputError as error:
        assert "\n" not in str(error)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Image(back, **kwargs)
