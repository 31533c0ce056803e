"""A 3-D PSF read from an OME-Zarr image, its voxel size from the multiscales ``scale`` (io/ome_zarr.py)."""

from __future__ import annotations

import numpy as np
import pytest

zarr = pytest.importorskip("zarr")
pytest.importorskip("ome_zarr")

from ome_zarr_helpers import ome_zarr_psf  # noqa: E402

from napari_treg.errors import InvalidInputError  # noqa: E402
from napari_treg.io import files as io  # noqa: E402
from napari_treg.io.ome_zarr import read_ome_zarr_psf  # noqa: E402


def test_the_psf_and_its_voxel_size_in_micrometres_are_read(tmp_path):
    psf = np.random.default_rng(0).random((3, 5, 7))
    path = ome_zarr_psf(tmp_path / "psf.ome.zarr", psf, scale=(300, 100, 110), unit="nanometer")
    volume, voxel = read_ome_zarr_psf(path)
    np.testing.assert_array_equal(volume, psf.astype(np.float32))
    np.testing.assert_allclose(voxel, (0.3, 0.1, 0.11))
    np.testing.assert_allclose(io.read_voxel_size(path), (0.3, 0.1, 0.11))


def test_a_channel_axis_of_one_is_dropped_and_the_axes_are_put_in_z_y_x_order(tmp_path):
    psf = np.random.default_rng(1).random((1, 3, 5, 7))
    path = ome_zarr_psf(tmp_path / "psf.ome.zarr", psf, scale=(1, 0.5, 0.2, 0.2), axes="czyx")
    volume, voxel = read_ome_zarr_psf(path)
    np.testing.assert_array_equal(volume, psf[0].astype(np.float32))
    assert voxel == (0.5, 0.2, 0.2)


def test_a_plain_zarr_array_is_a_psf_without_a_voxel_size(tmp_path):
    path = tmp_path / "psf.zarr"
    zarr.create_array(str(path), data=np.ones((3, 5, 5), np.float32))
    volume, voxel = read_ome_zarr_psf(path)
    assert volume.shape == (3, 5, 5) and voxel is None and io.read_voxel_size(path) is None


@pytest.mark.parametrize(
    ("shape", "axes", "unit", "named"),
    [
        ((2, 3, 5, 5), "czyx", "micrometer", "hold more than one"),
        ((5, 5), "yx", "micrometer", "needs the axes z, y and x"),
        ((3, 5, 5), "zyx", "parsec", "'parsec'"),
    ],
)
def test_a_psf_that_is_not_one_z_stack_in_known_units_is_refused_by_name(tmp_path, shape, axes, unit, named):
    path = ome_zarr_psf(tmp_path / "psf.ome.zarr", np.ones(shape), scale=(1.0,) * len(shape), axes=axes, unit=unit)
    with pytest.raises(InvalidInputError, match=named):
        read_ome_zarr_psf(path)
