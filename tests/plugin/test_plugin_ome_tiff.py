"""Saving a result keeps it a scientific record: napari's save/open through the plugin's OME-TIFF writer/reader."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_treg.plugin.ome_tiff import napari_get_reader

PROVENANCE = {
    "params": {"prompt": "fluorescent nuclei", "steps": 4, "guidance": 5.0},
    "model": "tiny",
    "seed": 3,
    "residual": 0.0123,
    "residual_over_noise": None,
    "versions": {"napari-treg": "0.1.0"},
    "metrics": {"psnr": 27.5, "ssim": 0.81},
}


@pytest.mark.parametrize(
    "shape, rgb, kwargs",
    [
        (
            (3, 16, 24),
            False,
            {
                "scale": (0.3, 0.05, 0.05),
                "units": "um",
                "axis_labels": ("z", "y", "x"),
                "translate": (1.0, -2.0, 5.5),
                "colormap": "green",
            },
        ),
        ((16, 24), False, {"scale": (0.1, 0.2), "units": "nm", "rotate": 30.0, "shear": [0.1]}),
        ((16, 24, 3), True, {"scale": (2.0, 2.0)}),
    ],
)
def test_save_and_open_through_napari_keep_geometry_and_provenance(make_napari_viewer, tmp_path, shape, rgb, kwargs):
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).uniform(0, 255 if rgb else 1, shape).astype(np.uint8 if rgb else np.float32)
    layer = viewer.add_image(data, name="cells TReg", rgb=rgb, metadata={"treg": PROVENANCE}, **kwargs)
    viewer.layers.selection.active = layer
    path = tmp_path / "cells.ome.tif"

    written = viewer.layers.save(str(path), selected=True, plugin="napari-treg")
    assert written == [str(path)] and path.exists()
    assert napari_get_reader(str(path)) is not None
    (opened,) = viewer.open(str(path), plugin="napari-treg")

    np.testing.assert_array_equal(opened.data, data)
    assert opened.rgb == rgb and opened.name.startswith("cells TReg")
    assert opened.metadata["treg"] == PROVENANCE
    for attribute in ("scale", "translate", "rotate", "shear"):
        np.testing.assert_allclose(np.asarray(getattr(opened, attribute)), np.asarray(getattr(layer, attribute)))
    np.testing.assert_allclose(opened.affine.affine_matrix, layer.affine.affine_matrix)
    assert opened.units == layer.units and opened.axis_labels == layer.axis_labels
    if not rgb:
        assert opened.colormap.name == layer.colormap.name
        np.testing.assert_allclose(opened.contrast_limits, layer.contrast_limits)


def test_the_file_is_an_ome_tiff_other_software_reads(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((2, 8, 8), np.float32), scale=(0.5, 0.1, 0.1), units="um", name="stack")
    path = tmp_path / "stack.ome.tif"
    viewer.layers.save(str(path), selected=True, plugin="napari-treg")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and tif.series[0].axes == "ZYX"
        pixels = tif.ome_metadata
    assert 'PhysicalSizeX="0.1"' in pixels and 'PhysicalSizeZ="0.5"' in pixels and "µm" in pixels
    assert layer.name in pixels


def test_other_files_are_left_to_other_readers(tmp_path):
    plain = tmp_path / "plain.ome.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.uint8), ome=True)
    assert napari_get_reader(str(plain)) is None
    assert napari_get_reader(str(tmp_path / "image.png")) is None
    assert napari_get_reader(str(tmp_path / "missing.ome.tif")) is None


def test_a_restored_result_saved_and_opened_keeps_its_record(restore_widget, run_to_end, tmp_path):
    viewer = restore_widget.viewer
    viewer.add_image(
        np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32),
        name="y",
        scale=(0.1, 0.1),
        units="um",
        rotate=15,
    )
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 1
    run_to_end(restore_widget)
    result = viewer.layers["y TReg"]
    np.testing.assert_allclose(result.rotate, viewer.layers["y"].rotate)  # the input's rotation is carried over
    path = tmp_path / "y.ome.tif"
    viewer.layers.selection.active = result
    viewer.layers.save(str(path), selected=True, plugin="napari-treg")
    (opened,) = viewer.open(str(path), plugin="napari-treg")
    assert opened.metadata["treg"] == result.metadata["treg"]
    np.testing.assert_allclose(opened.scale, [0.1, 0.1])
    assert str(opened.units[0]) == "micrometer"
