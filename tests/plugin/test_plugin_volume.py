"""The restore dock with a 3-D PSF: the whole stack restored as one volume; voxel sizes from the layers."""

from __future__ import annotations

import numpy as np

from napari_treg.plugin.layers import CURRENT_PLANE


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
