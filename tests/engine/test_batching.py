"""Stacks solved as batches give the same planes as one at a time, for the same seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_treg import restore
from napari_treg.errors import InvalidInputError
from napari_treg.memory import AUTO_BATCH_MAX, PLANE_BYTES_PER_PIXEL, SOLVE_BYTES_PER_PIXEL, auto_batch_size
from napari_treg.operators import GaussianBlur, SuperResolution

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
    one = restore(image, SuperResolution(2), batch_size=1, **kwargs)
    many = restore(image, SuperResolution(2), batch_size=4, **kwargs)
    assert one.shape == (48, 48)
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-4)


def test_auto_batch_size_fits_the_free_memory():
    pixels = 512 * 512
    solve, plane = SOLVE_BYTES_PER_PIXEL * pixels, PLANE_BYTES_PER_PIXEL * pixels
    assert auto_batch_size(8, (512, 512), torch.float16, None) == 1  # CPU: no free-memory figure
    assert auto_batch_size(8, (512, 512), torch.float16, solve + 3 * plane + 1) == 3
    assert auto_batch_size(8, (512, 512), torch.float16, solve + 100 * plane) == AUTO_BATCH_MAX
    assert auto_batch_size(2, (512, 512), torch.float16, solve + 100 * plane) == 2  # never more than the planes
    assert auto_batch_size(8, (512, 512), torch.float32, 2 * (solve + 3 * plane) + 1) == 3  # float32: twice
    assert auto_batch_size(8, (512, 512), torch.float32, solve + 3 * plane + 1) == 1
    assert auto_batch_size(8, (512, 512), torch.float16, solve // 2) == 1  # one at a time at the least
    assert auto_batch_size(8, (1024, 1024), torch.float16, solve + 3 * plane + 1) == 1  # 4x the pixels


def test_auto_batch_on_the_cpu_solves_one_plane_at_a_time(tiny):
    stack = np.random.default_rng(2).uniform(0, 1, (3, 16, 16)).astype(np.float32)
    out, info = restore(stack, GaussianBlur(1.0), model=tiny, return_info=True, **SETTINGS)
    assert info["params"]["batch_size"] == 1  # the resolved number, so that the run can be repeated
    again = restore(stack, GaussianBlur(1.0), model=tiny, batch_size=1, **SETTINGS)
    np.testing.assert_array_equal(out, again)


def test_batch_size_must_be_a_number_or_auto(tiny):
    with pytest.raises(InvalidInputError, match="batch_size must be a whole number >= 1 or 'auto', got 'four'"):
        restore(np.zeros((2, 16, 16)), GaussianBlur(1.0), model=tiny, batch_size="four", steps=1)
