"""Hostile image files for ``napari_treg.io.files``: every Pillow mode, CMYK JPEG, FIFOs and devices (issue 23)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_treg.cli import commands as cli
from napari_treg.errors import InvalidInputError
from napari_treg.io import files as io

RED = (204, 51, 102)  # web-safe, so the palette mode P holds it exactly


def _coloured(mode: str) -> Image.Image:
    """A 6x6 image of RED in ``mode`` (converted from RGB where Pillow can, else a blank one)."""
    try:
        return Image.new("RGB", (6, 6), RED).convert(mode)
    except ValueError:
        return Image.new(mode, (6, 6))


@pytest.mark.parametrize("mode", Image.MODES)
def test_every_pillow_mode_is_grey_or_rgb(mode):
    pixels = io.picture_pixels(_coloured(mode))
    assert pixels.ndim == 2 or pixels.shape[-1] == 3, (mode, pixels.shape)
    assert pixels.dtype.isnative
    if mode in io.COLOUR_MODES:  # the colour survives: converted, not reinterpreted channel by channel
        assert np.abs(pixels[0, 0].astype(int) - RED).max() <= 12, (mode, pixels[0, 0])


def test_an_unknown_mode_is_refused_by_name():
    class Strange:
        mode = "BGR;24"
        info: dict = {}

    with pytest.raises(ValueError, match="colour mode 'BGR;24'.*convert it to RGB or grey"):
        io.picture_pixels(Strange())


def test_a_cmyk_jpeg_reads_as_its_colours(tmp_path):
    """Issue 23.1: K was dropped as if it were alpha (red came out cyan)."""
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), RED).convert("CMYK").save(path, quality=100)
    pixels = io.read_image(path)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - RED).max() <= 12


def test_a_cmyk_jpeg_with_a_broken_icc_profile_falls_back_to_the_plain_conversion(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), RED).convert("CMYK").save(path, quality=100, icc_profile=b"not a profile")
    assert Image.open(path).info.get("icc_profile") == b"not a profile"
    assert np.abs(io.read_image(path).astype(int) - RED).max() <= 12


@pytest.mark.parametrize(
    "mode, expected_shape",
    [("P", (8, 8, 3)), ("LA", (8, 8)), ("1", (8, 8)), ("I;16", (8, 8)), ("RGBA", (8, 8, 3)), ("L", (8, 8))],
)
def test_png_modes_read_as_grey_or_rgb(tmp_path, mode, expected_shape):
    path = tmp_path / "a.png"
    _coloured(mode).resize((8, 8)).save(path)
    assert io.read_image(path).shape == expected_shape


def test_an_animated_png_is_refused_by_name(tmp_path):
    path = tmp_path / "anim.png"
    frames = [Image.new("L", (8, 8), value) for value in (0, 128)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(InvalidInputError, match="2 frames"):
        io.read_image(path)


# ------------------------------------------------------------------------------ files that are not files


def _call_with_deadline(call, fifo=None, seconds: float = 30.0):
    """``call()`` in a thread; if it is still blocked after ``seconds``, unblock a FIFO reader and fail."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if fifo is not None:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # releases open(): the reader sees EOF
        pytest.fail("reading blocked")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInputError, match="is a FIFO.*not a regular file"):
        _call_with_deadline(lambda: io.read_image(fifo), fifo)


def test_a_device_behind_a_link_is_refused(tmp_path):
    link = tmp_path / "zeros.npy"
    link.symlink_to("/dev/zero")  # would read forever
    with pytest.raises(InvalidInputError, match="character device"):
        _call_with_deadline(lambda: io.read_image(link))


@pytest.mark.parametrize("role", ["input", "--mask", "--kernel"])
def test_cli_refuses_a_fifo_as_input_mask_or_kernel(tmp_path, capsys, role):
    image = tmp_path / "in.npy"
    np.save(image, np.zeros((16, 16), np.float32))
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    operator = {"input": ["--operator", "denoise"], "--mask": ["--operator", "inpaint", "--mask", str(fifo)]}
    operator["--kernel"] = ["--operator", "kernel", "--kernel", str(fifo)]
    source = fifo if role == "input" else image
    argv = ["degrade", str(source), "-o", str(tmp_path / "out.npy"), *operator[role], "-q"]
    assert _call_with_deadline(lambda: cli.main(argv), fifo) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a FIFO" in err[0], err
    assert not (tmp_path / "out.npy").exists()


# ------------------------------------------------------------------------------ damaged TIFF bytes (hypothesis)


def _valid_tiff() -> bytes:
    import io as stdio

    import tifffile

    buffer = stdio.BytesIO()
    tifffile.imwrite(buffer, np.arange(96, dtype=np.uint16).reshape(2, 6, 8), metadata={"axes": "ZYX"})
    return buffer.getvalue()


VALID_TIFF = _valid_tiff()


@settings(max_examples=int(os.environ.get("TREG_TIFF_EXAMPLES", "60")), deadline=None)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(VALID_TIFF) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(8, len(VALID_TIFF)),
)
def test_a_damaged_tiff_is_an_image_or_one_clear_error(tmp_path_factory, edits, cut):
    """Bytes changed in the header, the tags or the pixels, or the file cut short."""
    damaged = bytearray(VALID_TIFF)
    for position, value in edits:
        damaged[position] = value
    path = tmp_path_factory.mktemp("tiff") / "damaged.tif"
    path.write_bytes(bytes(damaged[:cut]))
    try:
        image = _call_with_deadline(lambda: io.read_image(path), seconds=20)
    except InvalidInputError as error:
        assert str(path) in str(error) and "\n" not in str(error)
    else:
        assert isinstance(image, np.ndarray)
