"""Photon noise: the Poisson-Gaussian model, its simulation, its estimate from the image, and bad input."""

import numpy as np
import pytest

from napari_treg import degrade
from napari_treg.errors import InvalidInputError
from napari_treg.noise import PoissonGaussian, estimate_poisson_gaussian
from napari_treg.operators import GaussianBlur, Inpainting

TRUTH = PoissonGaussian(gain=2.0, read_sd=3.0, offset=100.0)


def ramp(size: int = 256, low: float = 5.0, high: float = 500.0) -> np.ndarray:
    """A horizontal ramp of ``low`` to ``high`` photons, in ADU of TRUTH."""
    photons = np.tile(np.linspace(low, high, size), (size, 1))
    return TRUTH.gain * photons + TRUTH.offset


def test_variance_is_affine_in_the_intensity_and_clipped_at_the_floor():
    assert TRUTH.variance(300.0) == pytest.approx(2 * 200 + 9)
    assert TRUTH.variance(800.0) == pytest.approx(2 * 700 + 9)
    np.testing.assert_allclose(TRUTH.variance(np.array([50.0, 100.0, 104.5])), [9.0, 9.0, 18.0])
    assert PoissonGaussian(gain=3.0, read_sd=0.0).floor == 9.0  # one photon's variance when there is no read noise


def test_model_units_give_the_same_variance_scaled_by_the_range():
    low, high = 110.0, 1100.0
    variance = TRUTH.in_model_units(low, high)
    import torch

    intensities = np.array([150.0, 300.0, 800.0, 1090.0])
    model_values = torch.from_numpy((intensities - low) * 2 / (high - low) - 1)
    half = (high - low) / 2
    np.testing.assert_allclose(variance.of(model_values).numpy() * half**2, TRUTH.variance(intensities), rtol=1e-12)
    assert variance.floor * half**2 == pytest.approx(TRUTH.floor)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"gain": 0.0, "read_sd": 1.0}, "gain must be > 0"),
        ({"gain": -2.0, "read_sd": 1.0}, "gain must be > 0"),
        ({"gain": 1.0, "read_sd": -1.0}, "read_sd must be at least 0"),
        ({"gain": float("nan"), "read_sd": 1.0}, "gain must be finite"),
        ({"gain": 1.0, "read_sd": 1.0, "offset": float("inf")}, "offset must be finite"),
    ],
)
def test_bad_parameters_are_refused_by_name(values, message):
    with pytest.raises(InvalidInputError, match=message):
        PoissonGaussian(**values)


def test_simulation_is_seeded_and_has_the_model_mean_and_variance():
    clean = np.full((200, 200), 300.0)
    first = TRUTH.simulate(clean, np.random.default_rng(4))
    np.testing.assert_array_equal(first, TRUTH.simulate(clean, np.random.default_rng(4)))
    assert first.mean() == pytest.approx(300.0, abs=0.5)
    assert first.var() == pytest.approx(TRUTH.variance(300.0), rel=0.03)
    # photons come in steps of gain: the values less the read noise are offset + gain * whole numbers
    noiseless = PoissonGaussian(gain=2.0, read_sd=0.0, offset=100.0).simulate(clean, np.random.default_rng(0))
    np.testing.assert_array_equal((noiseless - 100.0) % 2.0, 0.0)


def test_degrade_simulates_the_model_after_the_operator():
    clean = ramp(64).astype(np.float32)
    measured = degrade(clean, GaussianBlur(1.0), noise_model=TRUTH, seed=5)
    again = degrade(clean, GaussianBlur(1.0), noise_model=TRUTH, seed=5)
    np.testing.assert_array_equal(measured, again)
    assert not np.array_equal(measured, degrade(clean, GaussianBlur(1.0), noise_model=TRUTH, seed=6))
    blurred = degrade(clean, GaussianBlur(1.0), noise=0.0)
    residual = (measured - blurred) / np.sqrt(TRUTH.variance(blurred))
    assert abs(residual.mean()) < 0.05
    assert residual.std() == pytest.approx(1.0, abs=0.05)


def test_degrade_refuses_an_image_mostly_below_the_offset_and_a_wrong_model():
    with pytest.raises(InvalidInputError, match="below the offset 100"):
        degrade(np.full((32, 32), 50.0, np.float32), GaussianBlur(1.0), noise_model=TRUTH)
    with pytest.raises(
        InvalidInputError, match="noise_model must be .gaussian. or a napari_treg.noise.PoissonGaussian"
    ):
        degrade(np.ones((32, 32), np.float32), GaussianBlur(1.0), noise_model="poisson")


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("offset", [None, 100.0])
def test_the_estimate_on_the_photon_ramp_is_within_15_percent_at_300_and_800_adu(seed, offset):
    noisy = TRUTH.simulate(ramp(), np.random.default_rng(seed))
    model = estimate_poisson_gaussian(noisy, offset=offset)
    for adu in (300.0, 800.0):
        assert model.variance(adu) == pytest.approx(TRUTH.variance(adu), rel=0.15)
    assert model.gain == pytest.approx(2.0, rel=0.15)


def test_a_known_gain_is_kept_and_only_the_intercept_is_fitted():
    noisy = TRUTH.simulate(ramp(), np.random.default_rng(2))
    model = estimate_poisson_gaussian(noisy, offset=100.0, gain=2.0)
    assert (model.gain, model.offset) == (2.0, 100.0)
    for adu in (300.0, 800.0):
        assert model.variance(adu) == pytest.approx(TRUTH.variance(adu), rel=0.15)
    doubled = estimate_poisson_gaussian(noisy, offset=100.0, gain=4.0)  # a wrong gain is kept, not corrected
    assert doubled.gain == 4.0 and doubled.variance(800.0) > 1.5 * TRUTH.variance(800.0)


def test_the_estimate_leaves_out_unmeasured_values():
    noisy = TRUTH.simulate(ramp(128), np.random.default_rng(2))
    mask = np.zeros(noisy.shape, bool)
    mask[:, ::8] = True  # every 8th column missing, filled with junk
    noisy[mask] = np.random.default_rng(3).uniform(0, 5000, int(mask.sum()))
    model = estimate_poisson_gaussian(noisy[None, None], operator=Inpainting(mask))
    assert model.variance(800.0) == pytest.approx(TRUTH.variance(800.0), rel=0.15)
    assert estimate_poisson_gaussian(noisy).variance(800.0) > 1.25 * TRUTH.variance(800.0)  # the junk counts without it


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((128, 128), 500.0), "too flat"),
        (np.full((20, 20), 500.0), "too few homogeneous 2x2 blocks"),
        (np.where(np.eye(128) > 0, np.nan, 500.0), "NaN or infinite"),
        (np.zeros((2, 3)), "too few homogeneous"),
        (np.zeros((4, 4, 4)), r"an \(H, W\) image or planes"),
    ],
)
def test_estimate_failures_say_what_to_give_instead(image, message):
    with pytest.raises(InvalidInputError, match=message):
        estimate_poisson_gaussian(image)


def test_a_variance_that_falls_with_intensity_is_not_poisson_gaussian():
    clean = ramp(128)
    sd = np.linspace(30.0, 3.0, 128)[None, :]
    noisy = clean + sd * np.random.default_rng(0).standard_normal(clean.shape)
    with pytest.raises(InvalidInputError, match="does not grow with intensity"):
        estimate_poisson_gaussian(noisy)
