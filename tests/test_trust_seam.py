"""Trust tests that depend on the engine seam (issue 10): they pass once the engine checks its result.

The finiteness guard is ``napari_treg.solver.divergence.check_finite``; the CLI and ``degrade`` already
use it (tests/test_reliability.py). ``restore`` must call it on its result inside the engine, for
every path (untiled, tiled, every method); until then these tests fail on purpose.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_treg import restore
from napari_treg.errors import DivergenceError
from napari_treg.models.tiny import build_tiny_prior
from napari_treg.operators import Denoising

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_prior(seed=0)


@pytest.mark.parametrize("tiles", [None, 16], ids=["whole", "tiled"])
def test_restore_never_returns_a_non_finite_result(tiny, tiles):
    """guidance=1e30 decodes to NaN with the tiny model: nothing may be returned."""
    image = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    with pytest.raises(DivergenceError, match="NaN or infinite"):
        restore(image, Denoising(), model=tiny, steps=2, guidance=1e30, tile_size=tiles, tile_overlap=8)
