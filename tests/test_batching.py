"""Stacks solved as batches give the same planes as one at a time, for the same seeds."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg import restore
from napari_treg.operators import GaussianBlur, SuperResolution
from napari_treg.tiling import restore_tiled

# CFG, adaptive negation and data consistency all on; few steps to stay fast
SETTINGS = dict(steps=4, dc_every=2, guidance=3.0, adaptive_negation=True, negation_steps=2, prompt="cells", seed=5)


@pytest.fixture(scope="module")
def tiny():
    from napari_treg.models import load_model

    return load_model("tiny", device="cpu")


def test_batch_of_four_equals_four_single_planes(tiny):
    stack = np.random.default_rng(0).uniform(0, 255, (4, 16, 16)).astype(np.float32)
    one = restore(stack, GaussianBlur(1.0), model=tiny, batch_size=1, **SETTINGS)
    four = restore(stack, GaussianBlur(1.0), model=tiny, batch_size=4, **SETTINGS)
    assert np.ptp(one) > 0
    np.testing.assert_allclose(four, one, rtol=0, atol=1e-4 * np.ptp(stack))


def test_tiles_batched_equal_tiles_one_by_one(tiny):
    image = np.random.default_rng(1).uniform(0, 1, (24, 24)).astype(np.float32)
    kwargs = dict(model=tiny, tile_size=32, tile_overlap=16, **SETTINGS)
    one = restore_tiled(image, SuperResolution(2), batch_size=1, **kwargs)
    many = restore_tiled(image, SuperResolution(2), batch_size=4, **kwargs)
    assert one.shape == (48, 48)
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-4)
