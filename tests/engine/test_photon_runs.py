"""Photon noise through the engine: run options, restore and ensemble with the model, provenance, bad input."""

import numpy as np
import pytest

from napari_treg import InvalidInputError, degrade, ensemble, restore
from napari_treg.engine.restorer import RunSettings
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.noise import PoissonGaussian
from napari_treg.operators import Denoising, GaussianBlur

CAMERA = PoissonGaussian(gain=2.0, read_sd=3.0, offset=100.0)


def photons(size: int = 32) -> np.ndarray:
    """A smooth spot of 400 photons on 5 photons of background."""
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    return 5.0 + 395.0 * np.exp(-(rows**2 + cols**2) / (2 * (size / 5) ** 2))


def photon_image(size: int = 32, seed: int = 0) -> np.ndarray:
    """:func:`photons` in ADU of CAMERA, with its photon noise."""
    return degrade((100.0 + 2.0 * photons(size)).astype(np.float32), Denoising(), noise_model=CAMERA, seed=seed)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"gain": 2.0, "read_sd": 3.0}, "give noise_model='poisson-gaussian' too"),
        ({"noise_model": "poisson-gaussian", "noise": 0.1}, "not both"),
        ({"noise_model": "poisson-gaussian", "gain": 2.0}, "give both gain and read_sd"),
        ({"noise_model": "poisson-gaussian", "gain": 0.0, "read_sd": 1.0}, "gain must be > 0"),
        ({"noise_model": "poisson-gaussian", "gain": 1.0, "read_sd": -1.0}, "read_sd must be at least 0"),
        ({"noise_model": "poisson"}, "noise_model must be one of gaussian, poisson-gaussian"),
    ],
)
def test_run_options_refuse_a_half_or_contradictory_model(values, message):
    with pytest.raises(InvalidInputError, match=message):
        RunSettings(**values)


def test_restore_records_the_model_in_input_and_model_units():
    image = photon_image()
    prior = AnalyticPrior(classes=("disk",))
    result, info = restore(image, Denoising(), model=prior, steps=6, noise_model=CAMERA, return_info=True)
    record = info["noise_model"]
    assert record["input_units"] == {"gain": 2.0, "read_sd": 3.0, "offset": 100.0}
    low, high = info["intensity_range"]
    assert record["model_units"] == CAMERA.in_model_units(low, high).as_dict()
    assert record["source"] == "given"
    assert info["params"]["noise_model"] == "poisson-gaussian" and info["params"]["gain"] == 2.0
    # the residual is in noise units per value: a restoration near the measurement is about 1 or below
    assert 0.0 < info["residual_over_noise"] < 1.5
    replayed = restore(
        image, Denoising(), model=prior, steps=6, noise_model="poisson-gaussian", gain=2.0, read_sd=3.0, offset=100.0
    )
    np.testing.assert_array_equal(result, replayed)


def test_the_default_is_unchanged_and_gaussian_names_the_default():
    image = photon_image()
    prior = AnalyticPrior(classes=("disk",))
    plain, info = restore(image, GaussianBlur(1.0), model=prior, steps=6, prompt="a disk", return_info=True)
    named = restore(image, GaussianBlur(1.0), model=prior, steps=6, prompt="a disk", noise_model="gaussian")
    np.testing.assert_array_equal(plain, named)
    assert "noise_model" not in info
    photon = restore(image, GaussianBlur(1.0), model=prior, steps=6, prompt="a disk", noise_model=CAMERA)
    assert not np.array_equal(plain, photon)  # the weights reach the data steps


def test_an_estimated_model_says_so_and_a_small_image_asks_for_the_parameters():
    image = photon_image(64)
    _, info = restore(
        image, Denoising(), model="analytic", steps=3, noise_model="poisson-gaussian", offset=100.0, return_info=True
    )
    assert info["noise_model"]["source"].startswith("estimated from the measurement")
    assert info["noise_model"]["input_units"]["gain"] == pytest.approx(2.0, rel=0.3)
    with pytest.raises(InvalidInputError, match="give gain and read_sd instead"):
        restore(photon_image(16), Denoising(), model="analytic", steps=3, noise_model="poisson-gaussian")


def test_bad_input_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr("napari_treg.api.get_prior", lambda *a: pytest.fail("work started"))
    image = photon_image()
    with pytest.raises(InvalidInputError, match="below the offset 5000"):
        restore(image, Denoising(), noise_model=PoissonGaussian(2.0, 3.0, 5000.0))
    with pytest.raises(InvalidInputError, match="noise_model must be 'gaussian', 'poisson-gaussian'"):
        restore(image, Denoising(), noise_model=3.0)


def test_baselines_refuse_the_model():
    with pytest.raises(InvalidInputError, match="used by method 'treg' only"):
        restore(photon_image(), Denoising(), model="analytic", steps=3, method="tikhonov", noise_model=CAMERA)


def test_ensemble_weighs_each_value_by_its_variance():
    """Denoising: a bright value is noisier than a dark one, so the data remove less of its prior variance."""
    image = photon_image()
    bright, dark = photons() > 200, photons() < 20
    result = ensemble(image, Denoising(), model="analytic", steps=20, samples=8, noise_model=CAMERA)
    share = result.data_share
    assert share[bright].mean() < share[dark].mean() - 0.005
    assert "Poisson-Gaussian" in result.info["noise_source"]
    assert result.info["settings"]["noise_model"]["input_units"]["gain"] == 2.0
    assert result.info["noise_model"] == result.info["settings"]["noise_model"]
    spread = result.std
    assert spread[bright].mean() > 2 * spread[dark].mean()  # the posterior spread follows the photon noise
    level = ensemble(image, Denoising(), model="analytic", steps=6, samples=4, noise=0.02)
    assert abs(level.data_share[bright].mean() - level.data_share[dark].mean()) < 0.005


def test_the_held_out_check_refuses_the_model_before_any_work(monkeypatch):
    monkeypatch.setattr("napari_treg.api.get_prior", lambda *a: pytest.fail("work started"))
    with pytest.raises(InvalidInputError, match="held-out check does not weigh values"):
        ensemble(photon_image(), Denoising(), samples=4, holdout=0.1, noise_model=CAMERA)
