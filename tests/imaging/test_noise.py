"""The noise-level estimate: right on white noise over smooth content, masks respected, clear errors."""

import numpy as np
import pytest

from napari_treg.errors import InvalidInputError
from napari_treg.imaging import noise
from napari_treg.models.analytic import template
from napari_treg.operators import Inpainting


@pytest.mark.parametrize("sigma", [0.01, 0.05, 0.2])
def test_estimate_on_a_template_with_white_noise(sigma):
    rng = np.random.default_rng(0)
    clean = template("disk", (64, 64)) * 2 - 1
    planes = clean[None, None] + sigma * rng.standard_normal((2, 3, 64, 64))
    assert noise.estimate_noise(planes) == pytest.approx(sigma, rel=0.1)


def test_unmeasured_values_are_left_out():
    rng = np.random.default_rng(1)
    mask = np.zeros((32, 32), bool)
    mask[:, :20] = True  # missing: most of the image
    planes = 0.05 * rng.standard_normal((1, 1, 32, 32))
    planes[..., mask] = rng.uniform(-50, 50, size=int(mask.sum()))  # whatever lies there must not count
    estimate = noise.estimate_noise(planes, Inpainting(mask))
    assert estimate == pytest.approx(0.05, rel=0.15)
    assert noise.estimate_noise(planes) > 1  # without the operator the junk dominates


def test_too_few_measured_pixels_is_refused():
    with pytest.raises(InvalidInputError, match="too few measured pixels"):
        noise.estimate_noise(np.zeros((1, 1, 6, 6)))
    with pytest.raises(InvalidInputError, match=r"planes \(N, C, h, w\)"):
        noise.estimate_noise(np.zeros((6, 6)))
