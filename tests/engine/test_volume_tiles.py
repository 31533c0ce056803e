"""A tiled volume run solved one tile at a time (Restorer.solve_tile / assemble_tiles, the batch's tile
units): the same image, bit for bit, and the same provenance as the whole run."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.engine.restorer import Restorer, RunSettings, prepare
from napari_treg.errors import InvalidInputError
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import Inpainting, VolumeBlur
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config

STACK = np.random.default_rng(0).random((4, 24, 20)).astype(np.float32)
PSF = VolumeBlur(np.random.default_rng(1).random((3, 3, 3)))
OPTIONS = RunSettings(seed=3, batch_size=2, tile_size=16, tile_overlap=4)


def restorer(prompt: str = "") -> Restorer:
    return Restorer(AnalyticPrior(), method_config(DEFAULT_SCHEDULE, {"steps": 4}), prompt=prompt)


@pytest.mark.parametrize("prompt", ["", "a disk"])
def test_tiles_solved_one_at_a_time_and_assembled_equal_the_whole_run(prompt):
    engine = restorer(prompt)
    whole = engine.restore(STACK, PSF, options=OPTIONS)
    run = prepare(STACK, PSF, OPTIONS)
    assert run.plan is not None and run.plan.count == 4
    pieces = [engine.solve_tile(prepare(STACK, PSF, OPTIONS), index) for index in reversed(range(run.plan.count))]
    assembled = engine.assemble_tiles(run, pieces)
    np.testing.assert_array_equal(assembled.image, whole.image)
    np.testing.assert_array_equal(assembled.residual, whole.residual)
    for key in ("residual", "tiling", "volume", "seed", "text_conflict"):
        assert assembled.info[key] == whole.info[key], key


def test_a_missing_tile_and_an_untiled_run_are_refused():
    engine = restorer()
    run = prepare(STACK, PSF, OPTIONS)
    with pytest.raises(InvalidInputError, match=r"4 tiles; got the pieces \[0, 1, 2\]"):
        engine.assemble_tiles(run, [engine.solve_tile(run, index) for index in range(3)])
    with pytest.raises(InvalidInputError, match="tile 4 does not exist"):
        engine.solve_tile(run, 4)
    with pytest.raises(InvalidInputError, match="not tiled"):
        engine.solve_tile(prepare(STACK, PSF, RunSettings()), 0)
    mask = np.zeros((24, 20), bool)
    mask[0, 0] = True
    masked = Inpainting(mask)
    with pytest.raises(InvalidInputError, match="cut per tile"):
        engine.solve_tile(prepare(STACK[0], masked, OPTIONS), 0)
