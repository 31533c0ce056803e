"""Image file reading/writing: round trips, float->integer rule, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.errors import InvalidInputError
from napari_treg.io import files as io

RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    "name, array",
    [
        ("a.tif", RNG.random((16, 12), dtype=np.float32)),
        ("a.tiff", RNG.integers(0, 65535, (3, 16, 12), dtype=np.uint16)),
        ("a.tif", RNG.integers(0, 255, (16, 12, 3), dtype=np.uint8)),
        ("a.npy", RNG.random((2, 16, 12)).astype(np.float64)),
        ("a.npy", RNG.integers(-5, 5, (16, 12), dtype=np.int32)),
        ("a.png", RNG.integers(0, 255, (16, 12), dtype=np.uint8)),
        ("a.png", RNG.integers(0, 255, (16, 12, 3), dtype=np.uint8)),
        ("a.png", RNG.integers(0, 65535, (16, 12), dtype=np.uint16)),
    ],
)
def test_round_trip_keeps_dtype_and_values(tmp_path, name, array):
    path = io.write_image(tmp_path / name, array)
    back = io.read_image(path)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp file left


def test_jpeg_round_trip_is_close(tmp_path):
    smooth = np.tile(np.linspace(0, 255, 32), (32, 1)).astype(np.uint8)
    back = io.read_image(io.write_image(tmp_path / "a.jpg", smooth))
    assert back.dtype == np.uint8 and back.shape == smooth.shape
    assert np.abs(back.astype(int) - smooth).max() <= 4


def test_float_to_png_rounds_and_clips_to_uint8_like_input(tmp_path):
    result = np.array([[-3.0, 0.4, 0.6], [254.5, 255.2, 300.0]], dtype=np.float32)
    back = io.read_image(io.write_image(tmp_path / "a.png", result, like=np.uint8))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, [[0, 0, 1], [254, 255, 255]])


def test_float_to_png_uint16_like_input(tmp_path):
    result = np.array([[-1.0, 1000.4], [65535.7, 70000.0]], dtype=np.float32)
    back = io.read_image(io.write_image(tmp_path / "a.png", result, like=np.zeros(1, np.uint16)))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, [[0, 1000], [65535, 65535]])


def test_float_unit_range_scales_to_255(tmp_path):
    result = np.array([[0.0, 0.5], [1.0, 1.2]], dtype=np.float32)
    like = np.array([0.0, 1.0], dtype=np.float32)
    back = io.read_image(io.write_image(tmp_path / "a.png", result, like=like))
    np.testing.assert_array_equal(back, [[0, 128], [255, 255]])


def test_float_without_like_uses_own_range():
    assert io.to_8_or_16_bit(np.array([0.0, 0.5, 1.0])).tolist() == [0, 128, 255]
    assert io.to_8_or_16_bit(np.array([2.0, 200.0])).dtype == np.uint8
    assert io.to_8_or_16_bit(np.array([2.0, 4000.0])).dtype == np.uint16


def test_rgb_uint16_png_becomes_8_bit(tmp_path):
    rgb = np.full((4, 4, 3), 65535, dtype=np.uint16)
    back = io.read_image(io.write_image(tmp_path / "a.png", rgb))
    assert back.dtype == np.uint8 and back.max() == 255


def test_rgba_png_reads_as_rgb(tmp_path):
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.zeros((5, 6, 4), dtype=np.uint8))
    assert io.read_image(tmp_path / "a.png").shape == (5, 6, 3)


def test_stack_to_png_is_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="stacks"):
        io.write_image(tmp_path / "a.png", np.zeros((2, 5, 5), np.uint8))


def test_unknown_extension_names_supported_ones(tmp_path):
    with pytest.raises(InvalidInputError, match=r"\.tif.*\.npy"):
        io.read_image(tmp_path / "a.bmp")
    with pytest.raises(InvalidInputError, match="no extension"):
        io.write_image(tmp_path / "a", np.zeros((2, 2)))


def test_missing_and_corrupt_input(tmp_path):
    with pytest.raises(InvalidInputError, match="not found"):
        io.read_image(tmp_path / "missing.tif")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InvalidInputError, match="cannot read"):
        io.read_image(tmp_path / "bad.png")


def test_missing_output_folder(tmp_path):
    with pytest.raises(InvalidInputError, match="folder does not exist"):
        io.write_image(tmp_path / "nope" / "a.npy", np.zeros(2))


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch, interrupt):
    def half_write(path, array):
        path.write_bytes(b"partial")
        raise interrupt()

    monkeypatch.setitem(io._WRITERS, ".tif", half_write)
    with pytest.raises(interrupt):
        io.write_image(tmp_path / "out.tif", np.zeros((4, 4)))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    old = io.write_image(tmp_path / "out.npy", np.arange(3))

    def half_write(path, array):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(io._WRITERS, ".npy", half_write)
    with pytest.raises(KeyboardInterrupt):
        io.write_image(old, np.zeros(5))
    np.testing.assert_array_equal(io.read_image(old), np.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]


# ------------------------------------------------------------------------------ damaged inputs, what a format holds


def _truncated_npy(path):
    np.save(path, np.arange(256.0).reshape(16, 16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


@pytest.mark.parametrize(
    "name, damage, message",
    [
        ("empty.npy", lambda p: p.write_bytes(b""), "cannot read"),
        ("short.npy", _truncated_npy, "truncated: its header promises 2048 bytes of data, it holds 1948"),
        ("magic.npy", lambda p: p.write_bytes(b"\x93NUMPY"), "cannot read"),
        ("empty.tif", lambda p: p.write_bytes(b""), "cannot read"),
        ("empty.png", lambda p: p.write_bytes(b""), "cannot read"),
        ("cut.png", lambda p: p.write_bytes(_png_bytes()[:60]), "cannot read"),
        ("cut.tif", lambda p: p.write_bytes(_tif_bytes()[:40]), "cannot read"),
    ],
)
def test_damaged_files_are_invalid_input_not_a_traceback(tmp_path, name, damage, message):
    damage(tmp_path / name)
    with pytest.raises(InvalidInputError, match=message):
        io.read_image(tmp_path / name)


def _png_bytes() -> bytes:
    import imageio.v3 as iio

    return iio.imwrite("<bytes>", RNG.integers(0, 255, (32, 32), dtype=np.uint8), extension=".png")


def _tif_bytes() -> bytes:
    import io as std_io

    import tifffile

    buffer = std_io.BytesIO()
    tifffile.imwrite(buffer, RNG.random((32, 32), dtype=np.float32))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, shape, dtype, fits",
    [
        ("a.png", (16, 16), np.float32, True),
        ("a.png", (16, 16, 3), np.float32, True),
        ("a.jpg", (16, 16, 4), np.uint16, True),
        ("a.png", (2, 16, 16), np.float32, False),
        ("a.jpg", (16, 16, 2), np.uint8, False),
        ("a.png", (16,), np.uint8, False),
        ("a.tif", (2, 3, 16, 16, 3), np.float32, True),
        ("a.npy", (16, 16), np.complex64, False),
    ],
)
def test_check_can_hold_knows_each_format(name, shape, dtype, fits):
    if fits:
        io.check_can_hold(name, shape, dtype)
    else:
        with pytest.raises(InvalidInputError):
            io.check_can_hold(name, shape, dtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["a.npy", "a.tif", "a.png"])
def test_non_finite_images_are_never_written(tmp_path, name, bad):
    from napari_treg.errors import DivergenceError

    array = np.ones((8, 8), np.float32)
    array[2, 3] = bad
    with pytest.raises(DivergenceError, match="1 NaN or infinite value"):
        io.write_image(tmp_path / name, array)
    assert list(tmp_path.iterdir()) == []
