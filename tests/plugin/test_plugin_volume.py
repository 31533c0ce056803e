"""The restore dock with a 3-D PSF: the whole stack restored as one volume; voxel sizes from the layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.plugin.layers import CURRENT_PLANE
from napari_treg.plugin.restore_form import VOLUME_PLANES


def test_a_3d_psf_layer_restores_the_whole_stack_as_one_volume(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    data = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    stack = viewer.add_image(data, name="stack", scale=(0.3, 0.1, 0.1))
    psf = viewer.add_image(np.ones((3, 5, 5), np.float32), name="beads", scale=(0.3, 0.1, 0.1))
    restore_widget.image.value = stack
    restore_widget.operator.value = "kernel"
    restore_widget.kernel.value = psf
    restore_widget.planes.value = CURRENT_PLANE  # a 3-D PSF takes the whole stack anyway
    restore_widget.preview.value = False
    run_to_end(restore_widget)
    result = viewer.layers[-1]
    assert result.data.shape == (4, 32, 32)
    assert result.metadata["treg"]["volume"]["solved_as"] == "one volume"
    assert np.array_equal(stack.data, data)


def test_a_psf_layer_of_another_voxel_size_is_refused_naming_both(restore_widget):
    viewer = restore_widget.viewer
    stack = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="stack", scale=(0.3, 0.1, 0.1))
    psf = viewer.add_image(np.ones((3, 5, 5), np.float32), name="beads", scale=(0.5, 0.1, 0.1))
    restore_widget.image.value = stack
    restore_widget.operator.value = "kernel"
    restore_widget.kernel.value = psf
    assert restore_widget.run() is None
    assert "(0.5, 0.1, 0.1) differs from the stack's (0.3, 0.1, 0.1)" in restore_widget.status.value


def test_the_planes_field_shows_the_volume_while_a_3d_psf_is_chosen_and_gives_the_choice_back(restore_widget):
    viewer = restore_widget.viewer
    stack = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="stack")
    psf = viewer.add_image(np.ones((3, 5, 5), np.float32), name="beads")
    flat = viewer.add_image(np.ones((5, 5), np.float32), name="flat psf")
    restore_widget.image.value = stack
    restore_widget.planes.value = CURRENT_PLANE
    restore_widget.operator.value = "widefield"
    assert restore_widget.planes.native.currentText() == VOLUME_PLANES
    assert not restore_widget.planes.enabled
    restore_widget.operator.value = "kernel"
    restore_widget.kernel.value = flat  # a 2-D PSF: plane by plane again
    assert restore_widget.planes.native.currentText() == CURRENT_PLANE
    assert restore_widget.planes.enabled
    restore_widget.kernel.value = psf
    assert restore_widget.planes.native.currentText() == VOLUME_PLANES
    viewer.add_image(np.zeros((4, 32, 32), np.float32), name="another")  # the form resets its choices
    assert restore_widget.planes.native.currentText() == VOLUME_PLANES
    restore_widget.operator.value = "gauss"
    assert restore_widget.planes.value == CURRENT_PLANE  # the user's choice back


def test_the_modelled_psf_voxel_size_is_prefilled_from_the_layer_scale_and_units(restore_widget):
    viewer = restore_widget.viewer
    stack = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="stack", scale=(250, 65, 65), units="nm")
    plain = viewer.add_image(np.zeros((4, 32, 32), np.float32), name="plain")
    restore_widget.image.value = stack
    restore_widget.operator.value = "confocal"
    assert restore_widget.voxel_z.value == pytest.approx(0.25)
    assert restore_widget.voxel_xy.value == pytest.approx(0.065)
    restore_widget.image.value = plain  # scale 1 without units says nothing: the fields stay
    assert restore_widget.voxel_xy.value == pytest.approx(0.065)


def test_a_psf_layer_in_nanometres_matches_a_stack_in_micrometres(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    stack = viewer.add_image(
        np.random.default_rng(1).random((3, 16, 16)).astype(np.float32),
        name="stack",
        scale=(0.3, 0.1, 0.1),
        units="um",
        axis_labels=("z", "y", "x"),
    )
    psf = viewer.add_image(np.ones((3, 3, 3), np.float32), name="beads", scale=(300, 100, 100), units="nm")
    restore_widget.image.value = stack
    restore_widget.operator.value = "kernel"
    restore_widget.kernel.value = psf
    restore_widget.preview.value = False
    run_to_end(restore_widget)
    result = viewer.layers[-1]
    assert result.metadata["treg"]["volume"]["solved_as"] == "one volume", restore_widget.status.value
    assert result.axis_labels == ("z", "y", "x")
    assert [str(unit) for unit in result.units] == ["micrometer"] * 3


def test_a_psf_file_is_opened_as_a_layer_with_its_voxel_size_and_chosen(restore_widget, tmp_path):
    import tifffile

    path = tmp_path / "bead.ome.tif"
    tifffile.imwrite(
        path,
        np.ones((3, 5, 5), np.float32),
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 0.3, "PhysicalSizeY": 0.1, "PhysicalSizeX": 0.1},
    )
    restore_widget.viewer.add_image(np.zeros((4, 16, 16), np.float32), name="stack")
    restore_widget.operator.value = "kernel"
    assert restore_widget.kernel_file.native.isVisibleTo(restore_widget.native)
    restore_widget.kernel_file.value = path
    chosen = restore_widget.kernel.value
    assert chosen is not None and chosen.name == "bead.ome"
    assert tuple(chosen.scale) == pytest.approx((0.3, 0.1, 0.1))
    assert restore_widget.planes.native.currentText() == VOLUME_PLANES
