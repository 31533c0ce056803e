"""plugin/output_layers.py in a real viewer: a run's layers are a list of (array, name suffix, layer
keyword arguments), placed over the input, so more maps of a run (an ensemble's) are data, not code."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.engine.restore_settings import RestoreSettings
from napari_treg.models.options import ModelSettings
from napari_treg.operators import SuperResolution
from napari_treg.plugin.layers import Planes, select_planes
from napari_treg.plugin.output_layers import OutputLayer, add_outputs, run_outputs
from napari_treg.plugin.restoration import Outcome, RestoreRequest


def _request(source, planes: Planes, residual: bool) -> RestoreRequest:
    return RestoreRequest(
        planes=planes,
        operator=SuperResolution(2),
        model=ModelSettings("tiny", "cpu"),
        settings=RestoreSettings.from_values({"prompt": "cells", "steps": 2, "rgb": False}),
        residual=residual,
        source=source,
        record={"operator": {"name": "sr", "factor": 2}, "reference": None},
    )


def _outcome(planes: Planes, residual: bool) -> Outcome:
    shape = tuple(2 * n for n in planes.data.shape[-2:])
    rng = np.random.default_rng(0)
    return Outcome(
        result=rng.uniform(0, 1, planes.data.shape[:-2] + shape).astype(np.float32),
        info={"residual": 0.01, "seed": 0, "params": {"steps": 2}},
        residual=rng.uniform(0, 1, planes.data.shape).astype(np.float32) if residual else None,
    )


def test_extra_maps_are_entries_named_after_the_result(make_napari_viewer):
    viewer = make_napari_viewer()
    source = viewer.add_image(np.zeros((16, 16), np.float32), name="y", scale=(1.0, 2.0), translate=(5.0, 0.0))
    planes = select_planes(source.data, False, "current plane", ())
    request, outcome = _request(source, planes, True), _outcome(planes, True)
    spread = np.full((32, 32), 0.5, np.float32)
    outputs = [
        *run_outputs(request, outcome, "y TReg"),
        OutputLayer(spread, " std", {"colormap": "magma", "metadata": {"treg_map": "std"}}),
    ]
    layers = add_outputs(viewer, request, "y TReg", outputs)

    assert [layer.name for layer in viewer.layers] == ["y", "y TReg residual", "y TReg", "y TReg std"]
    result, residual, std = layers
    assert viewer.layers.selection.active is result
    np.testing.assert_allclose(result.scale, [0.5, 1.0])  # restored grid: pixels 2x smaller
    np.testing.assert_allclose(std.scale, result.scale)
    np.testing.assert_allclose(std.translate, result.translate)
    np.testing.assert_allclose(residual.scale, source.scale)  # the residual lies on the measurement's grid
    assert std.colormap.name == "magma" and std.metadata == {"treg_map": "std"}
    assert not residual.visible and residual.metadata["treg_residual"]["result"] == "y TReg"
    assert result.metadata["treg"]["params"] == {"steps": 2} and result.metadata["treg"]["input_layer"] == "y"


def test_a_plane_of_a_stack_is_placed_at_its_plane(make_napari_viewer):
    viewer = make_napari_viewer()
    source = viewer.add_image(np.zeros((3, 8, 8), np.float32), name="stack", scale=(4.0, 1.0, 1.0))
    planes = select_planes(source.data, False, "current plane", (2,))
    request = _request(source, planes, False)
    (result,) = add_outputs(viewer, request, "stack TReg", run_outputs(request, _outcome(planes, False), "x"))
    assert result.data.shape == (1, 16, 16) and result.translate[0] == pytest.approx(8.0)
    assert result.metadata["treg"]["plane_index"] == [2]
