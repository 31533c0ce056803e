"""Bad masks, kernels and operator parameters get a clear error (napari_treg.operators).

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_treg import degrade, restore
from napari_treg.errors import (
    InvalidInputError,
)
from napari_treg.models.tiny import build_tiny_prior
from napari_treg.operators import GaussianBlur, Inpainting, KernelBlur, MotionBlur, SuperResolution

os.environ.setdefault("HF_HUB_OFFLINE", "1")


QUICK = dict(steps=2, dc_every=1, dc_until=1.0, negation_steps=1)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_prior(seed=0)


def _mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 3  # a label > 0 = missing
    return mask


# ------------------------------------------------------------------------------ bad input: masks, kernels, operators


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Inpainting(np.full((4, 4), np.nan)), "NaN"),
        (lambda: Inpainting(np.array([["a", "b"]] * 2)), "boolean or labels"),
        (lambda: Inpainting(np.zeros((4, 4, 3)) + np.eye(4)[..., None]), "2D"),
        (lambda: KernelBlur(np.full((3, 3), np.inf)), "NaN or infinite"),
        (lambda: KernelBlur(np.zeros((0, 3))), "2D"),
        (lambda: KernelBlur(np.ones((3, 3), complex)), "real numeric"),
        (lambda: KernelBlur(np.array([[1.0, -0.1, 1.0]])), "clip at 0"),
        (lambda: MotionBlur(-3), "positive"),
        (lambda: MotionBlur(5, angle=float("nan")), "angle"),
        (lambda: GaussianBlur(float("inf")), "finite"),
        (lambda: GaussianBlur(0), "positive"),
        (lambda: SuperResolution("two"), "number"),
        (lambda: SuperResolution(float("nan")), "factor"),
    ],
)
@pytest.mark.issue6
def test_bad_operator_parameters_name_the_problem(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


@pytest.mark.issue6
def test_masks_with_extra_axes_and_labels_work():
    labels = _mask(16, 16).astype(np.uint32)[None, None]
    assert Inpainting(labels).missing.shape == (16, 16)


@pytest.mark.parametrize("function", ["restore", "degrade"])
@pytest.mark.issue6
def test_mask_of_the_wrong_shape_names_both_shapes(tiny, function):
    operator = Inpainting(_mask(8, 8))
    with pytest.raises(InvalidInputError, match="mask is 8x8 but the image is 16x16"):
        if function == "restore":
            restore(np.zeros((16, 16)), operator, model=tiny, steps=1)
        else:
            degrade(np.zeros((16, 16)), operator)


@pytest.mark.issue6
def test_kernels_larger_than_the_image_work(tiny):
    """Mirror boundary, repeated periodically: a 41x41 PSF on a 12x12 image is fine."""
    image = np.random.default_rng(1).random((12, 12)).astype(np.float32)
    operator = KernelBlur(np.ones((41, 41)))
    blurred = degrade(image, operator, noise=0)
    assert blurred.shape == image.shape and np.isfinite(blurred).all()
    np.testing.assert_allclose(degrade(np.full((12, 12), 3.0), operator, noise=0), 3.0, rtol=1e-6)
    result = restore(blurred, operator, model=tiny, **QUICK)
    assert result.shape == image.shape and np.isfinite(result).all()


@pytest.mark.issue6
def test_degrade_refuses_sizes_not_divisible_by_the_factor():
    with pytest.raises(InvalidInputError, match="not divisible .* crop it to 28x32"):
        degrade(np.zeros((30, 32)), SuperResolution(4))


@pytest.mark.issue6
def test_restore_takes_any_measurement_size_for_super_resolution(tiny):
    result = restore(np.random.default_rng(2).random((5, 7)), SuperResolution(3), model=tiny, steps=1)
    assert result.shape == (15, 21)
