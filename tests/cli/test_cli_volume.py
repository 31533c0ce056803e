"""The command line with a 3-D PSF: a z-stack restored as one volume; modelled PSFs; voxel sizes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile

from napari_treg.cli import commands as cli
from napari_treg.io import files as io

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAST = ["--model", "analytic", "--steps", "3", "--device", "cpu", "-q"]


def stack(tmp_path, planes: int = 6, voxel=None):
    image = np.random.default_rng(0).random((planes, 16, 16)).astype(np.float32)
    path = tmp_path / "stack.tif"
    metadata = None if voxel is None else {"axes": "ZYX", **ome_sizes(voxel)}
    tifffile.imwrite(path, image, ome=voxel is not None, metadata=metadata)
    return path


def ome_sizes(voxel):
    return {"PhysicalSizeZ": voxel[0], "PhysicalSizeY": voxel[1], "PhysicalSizeX": voxel[2]}


def psf_file(tmp_path, voxel=None):
    psf = np.ones((3, 5, 5), np.float32)
    path = tmp_path / "psf.tif"
    tifffile.imwrite(
        path, psf, ome=voxel is not None, metadata=None if voxel is None else {"axes": "ZYX", **ome_sizes(voxel)}
    )
    return path


def test_a_3d_kernel_file_restores_the_stack_as_one_volume(tmp_path):
    out, info = tmp_path / "out.tif", tmp_path / "info.json"
    argv = [
        "restore",
        str(stack(tmp_path)),
        "-o",
        str(out),
        "--operator",
        "kernel",
        "--kernel",
        str(psf_file(tmp_path)),
    ]
    assert cli.main([*argv, "--info", str(info), *FAST]) == 0
    assert io.read_image(out).shape == (6, 16, 16)
    record = json.loads(info.read_text())
    assert record["volume"]["solved_as"] == "one volume"
    assert record["params"]["operator"].startswith("VolumeBlur(psf=3x5x5")


def test_widefield_takes_the_optical_parameters(tmp_path):
    out, info = tmp_path / "out.tif", tmp_path / "info.json"
    optics = ["--na", "0.8", "--wavelength", "0.6", "--immersion-index", "1.0", "--sample-index", "1.0"]
    voxels = ["--voxel-z", "1.0", "--voxel-xy", "0.2"]
    argv = ["restore", str(stack(tmp_path, planes=9)), "-o", str(out), "--operator", "widefield", *optics, *voxels]
    assert cli.main([*argv, "--info", str(info), *FAST]) == 0
    operator = json.loads(info.read_text())["params"]["operator"]
    assert "widefield na=0.8, wavelength=0.6" in operator and "voxel_size=(1.0, 0.2, 0.2)" in operator


def test_voxel_sizes_that_disagree_are_refused_naming_both(tmp_path, capsys):
    argv = ["restore", str(stack(tmp_path, voxel=(0.3, 0.1, 0.1))), "-o", str(tmp_path / "out.tif")]
    argv += ["--operator", "kernel", "--kernel", str(psf_file(tmp_path, voxel=(0.5, 0.1, 0.1))), *FAST]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "(0.5, 0.1, 0.1) differs from the stack's (0.3, 0.1, 0.1)" in err
    assert not (tmp_path / "out.tif").exists()


def test_ome_voxel_sizes_are_read_in_micrometres(tmp_path):
    path = tmp_path / "psf.ome.tif"
    metadata = {"axes": "ZYX", **ome_sizes((300, 100, 100)), "PhysicalSizeZUnit": "nm"}
    metadata |= {"PhysicalSizeYUnit": "nm", "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, np.ones((3, 5, 5), np.float32), ome=True, metadata=metadata)
    assert np.allclose(io.read_voxel_size(path), (0.3, 0.1, 0.1))
    assert io.read_voxel_size(psf_file(tmp_path)) is None


def test_an_ome_zarr_psf_restores_the_stack_and_its_voxel_size_is_compared(tmp_path, capsys):
    pytest.importorskip("ome_zarr")
    from ome_zarr_helpers import ome_zarr_psf

    psf = ome_zarr_psf(tmp_path / "psf.ome.zarr", np.ones((3, 5, 5)), scale=(500, 100, 100), unit="nanometer")
    out, info = tmp_path / "out.tif", tmp_path / "info.json"
    argv = ["restore", str(stack(tmp_path, voxel=(0.5, 0.1, 0.1))), "-o", str(out), "--operator", "kernel"]
    assert cli.main([*argv, "--kernel", str(psf), "--info", str(info), *FAST]) == 0
    assert json.loads(info.read_text())["params"]["operator"].startswith("VolumeBlur(psf=3x5x5")
    argv[1] = str(stack(tmp_path, voxel=(0.3, 0.1, 0.1)))
    assert cli.main([*argv, "--kernel", str(psf), *FAST]) == 2
    assert "(0.5, 0.1, 0.1) differs from the stack's (0.3, 0.1, 0.1)" in capsys.readouterr().err


def test_batch_compares_the_psf_voxel_size_with_each_stack_of_the_folder(tmp_path, capsys):
    """``batch`` with a 3-D kernel file: a folder whose second stack has other voxels is refused naming it."""
    folder = tmp_path / "in"
    folder.mkdir()
    for name, voxel in (("a.tif", (0.5, 0.1, 0.1)), ("b.tif", (0.3, 0.1, 0.1))):
        image = np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)
        tifffile.imwrite(folder / name, image, ome=True, metadata={"axes": "ZYX", **ome_sizes(voxel)})
    argv = ["batch", str(folder), "-o", str(tmp_path / "out"), "--operator", "kernel"]
    argv += ["--kernel", str(psf_file(tmp_path, voxel=(0.5, 0.1, 0.1))), *FAST]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "b.tif: the PSF's voxel size" in err and "(0.3, 0.1, 0.1)" in err
    assert not (tmp_path / "out").exists()


def test_batch_restores_a_folder_of_stacks_by_a_3d_kernel_file_in_tile_units(tmp_path):
    pytest.importorskip("distributed")
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    tifffile.imwrite(folder / "s.tif", np.random.default_rng(0).random((4, 24, 20)).astype(np.float32))
    argv = ["batch", str(folder), "-o", str(out), "--operator", "kernel", "--kernel", str(psf_file(tmp_path))]
    assert cli.main([*argv, "--tile-size", "16", "--tile-overlap", "4", "--workers", "1", *FAST]) == 0
    record = json.loads((out / "s.tif.treg.json").read_text())
    assert record["tile_units"] == 4 and record["params"]["operator"].startswith("VolumeBlur(psf=3x5x5")
