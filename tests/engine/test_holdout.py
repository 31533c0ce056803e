"""The ensemble's held-out check (napari_treg.engine.holdout): fit on hidden values, correct the prior's spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_treg import InvalidInputError, ensemble
from napari_treg.engine import holdout
from napari_treg.engine.ensemble import EnsembleSettings, restorer_ensemble
from napari_treg.engine.restorer import Restorer, RunSettings, prepare
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import GaussianBlur, Inpainting
from napari_treg.solver import TRegSettings

NOISE = 0.05
SIZE = 16
MISSING = np.random.default_rng(3).random((SIZE, SIZE)) < 0.5


def measurement(op, true_sigma=0.1, seed=7):
    truth, _ = AnalyticPrior(classes=("disk",), sigma=true_sigma).sample(
        1, 0, (SIZE, SIZE), torch.Generator().manual_seed(seed)
    )
    ax = op.forward(truth.double())
    y = ax + NOISE * torch.randn(ax.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return np.moveaxis(y[0].numpy().astype(np.float32), 0, -1)


def too_sure(**keywords):
    """8 samples of a model half as spread as the truth (sigma 0.05 against 0.1), random 50 % inpainting."""
    op = Inpainting(MISSING)
    settings = dict(
        model=AnalyticPrior(classes=("disk",), sigma=0.05),
        prompt="a disk",
        samples=8,
        steps=8,
        noise=NOISE,
        intensity_range=(-1.0, 1.0),
        batch_size=8,
    )
    return ensemble(measurement(op), op, **{**settings, **keywords})


# -- the maths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.5, 1.0, 2.5])
def test_the_factor_makes_the_held_out_residuals_unit_variance(factor):
    rng = np.random.default_rng(0)
    variance = rng.uniform(0.005, 0.02, 20_000)
    residual = rng.standard_normal(variance.size) * np.sqrt(factor**2 * variance + NOISE**2)
    assert holdout.fit_factor(residual, variance, NOISE) == pytest.approx(factor, rel=0.05)


def test_the_factor_stops_at_the_bounds_of_its_search():
    variance = np.full(100, 0.01)
    assert holdout.fit_factor(np.zeros(100), variance, NOISE) == holdout.FACTOR_RANGE[0]
    assert holdout.fit_factor(np.full(100, 1e3), variance, NOISE) == holdout.FACTOR_RANGE[1]
    assert "the bound of the search" in holdout.verdict(0.1, holdout.FACTOR_RANGE[1], applied=True)
    assert holdout.verdict(0.88, 1.04, applied=False).endswith("(fitted factor 1), not corrected")


def test_only_a_spread_the_held_out_values_reject_is_corrected():
    rng = np.random.default_rng(1)
    variance = np.full(2000, 0.01)
    right = rng.standard_normal(variance.size) * np.sqrt(variance + NOISE**2)

    def rejected(residual):
        covered = holdout.coverage(residual, variance, NOISE, 1.0, samples=1000)
        return holdout.rejects(residual, variance, NOISE, covered)

    assert not rejected(right)
    assert rejected(1.2 * right) and rejected(right / 1.2)
    # a variance off with the coverage right (heavy tails) is not corrected
    tails = right * np.where(np.arange(right.size) % 10 == 0, 2.5, 0.85)  # mean square 1.27
    assert holdout.coverage(tails, variance, NOISE, 1.0, samples=1000) == pytest.approx(0.9, abs=0.01)
    assert not rejected(tails)


def test_the_held_out_pixels_are_a_seeded_share_of_the_measured_ones():
    image = measurement(Inpainting(MISSING))
    run = prepare(image, Inpainting(MISSING), RunSettings(seed=4))
    hidden = holdout.hidden_map(run, 0.25)
    assert hidden.sum() == round(0.25 * (~MISSING).sum()) and not (hidden & MISSING).any()
    assert np.array_equal(hidden, holdout.hidden_map(prepare(image, Inpainting(MISSING), RunSettings(seed=4)), 0.25))
    assert not np.array_equal(
        hidden, holdout.hidden_map(prepare(image, Inpainting(MISSING), RunSettings(seed=5)), 0.25)
    )


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"holdout": 0.0}, "holdout must be > 0"),
        ({"holdout": -0.1}, "holdout must be > 0"),
        ({"holdout": 0.5}, r"between 0 and 0.5 \(exclusive\)"),
        ({"holdout": 0.7}, "holdout must be at most 0.5"),
        ({"holdout": "a tenth"}, "holdout must be a number"),
        ({"holdout": 0.1, "samples": 3}, "at least 4 samples"),
        ({"holdout": 0.01}, "the check needs at least 32"),
        ({"holdout": 0.1, "tile_size": 8, "tile_overlap": 2}, "does not work with tiles"),
    ],
)
def test_bad_input_is_refused_before_any_work(monkeypatch, keywords, message):
    monkeypatch.setattr("napari_treg.api.get_prior", lambda *a: pytest.fail("work started"))
    image = np.random.default_rng(0).random((16, 16), dtype=np.float32)
    with pytest.raises(InvalidInputError, match=message):
        ensemble(image, GaussianBlur(1.0), model="analytic", noise=NOISE, **{"samples": 8, **keywords})


# -- the check on the analytic prior -------------------------------------------------------------------


@pytest.fixture(scope="module")
def checked():
    return too_sure(holdout=0.2)


@pytest.fixture(scope="module")
def plain():
    return too_sure()


def test_a_too_sure_model_is_caught_and_its_invented_spread_widened(checked, plain):
    check = checked.info["holdout"]
    assert check["fraction"] == 0.2 and check["values"] == 3 * round(0.2 * (~MISSING).sum())
    assert check["coverage_before"] < 0.75 and check["factor"] > 1.5 and check["corrected"]
    assert abs(check["coverage_after"] - 0.9) < abs(check["coverage_before"] - 0.9)
    assert check["verdict"].startswith(f"held-out check: {check['coverage_before']:.0%} of 90% covered")
    assert check["prior_sd"] == pytest.approx(check["factor"] * checked.info["prior_sd"])
    # the uncorrected samples are the plain ensemble's (same sampler runs, same seeds)
    np.testing.assert_allclose(checked.uncorrected_std, plain.std, atol=1e-5)
    # invented pixels: the sampler's deviations, scaled by the factor about an unchanged mean
    np.testing.assert_allclose(checked.std[MISSING], check["factor"] * plain.std[MISSING], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(checked.mean[MISSING], plain.mean[MISSING], atol=1e-4)
    # measured pixels keep the measurement's spread: the exact posterior sd under the true prior (0.2), not 3x more
    true_sd = NOISE * 0.2 / np.sqrt(0.2**2 + NOISE**2)
    assert checked.std[~MISSING].mean() == pytest.approx(true_sd, rel=0.1)
    assert checked.data_share[~MISSING].mean() > plain.data_share[~MISSING].mean()  # tau' = c tau: more is measured


def test_the_check_costs_one_extra_ensemble_and_says_so(checked, plain):
    calls = checked.info["holdout"]["model_calls"]
    assert calls == 8 and checked.info["model_calls"] == plain.info["model_calls"] + calls  # 8 steps, one batch
    assert checked.info["holdout"]["seconds"] > 0
    assert "holdout" not in plain.info and plain.uncorrected_std is None


def test_streamed_samples_get_the_same_correction_as_kept_ones(checked):
    streamed = too_sure(holdout=0.2, keep_samples=False)
    assert streamed.samples is None
    np.testing.assert_allclose(streamed.mean, checked.mean, atol=1e-5)
    np.testing.assert_allclose(streamed.std, checked.std, atol=1e-5)
    np.testing.assert_allclose(checked.samples.mean(axis=0), checked.mean, atol=1e-5)
    assert streamed.info["holdout"]["factor"] == checked.info["holdout"]["factor"]


def test_with_the_right_model_nothing_changes():
    """With 50 steps the sampler's spread is right (with 8 it is too narrow, and the check says so)."""
    right = too_sure(holdout=0.2, model=AnalyticPrior(classes=("disk",), sigma=0.1), steps=50)
    plain = too_sure(model=AnalyticPrior(classes=("disk",), sigma=0.1), steps=50)
    check = right.info["holdout"]
    assert not check["corrected"] and check["factor"] == 1.0 and "not corrected" in check["verdict"]
    assert 0.8 < check["coverage_before"] == check["coverage_after"]
    np.testing.assert_allclose(right.std, plain.std, atol=1e-5)
    np.testing.assert_allclose(right.mean, plain.mean, atol=1e-5)


def test_the_restorer_is_unchanged_and_the_option_is_recorded():
    prior = AnalyticPrior(classes=("disk",), sigma=0.1)
    restorer = Restorer(prior, TRegSettings(steps=3))
    result = restorer_ensemble(
        restorer,
        measurement(Inpainting(MISSING)),
        Inpainting(MISSING),
        options=EnsembleSettings(samples=4, holdout=0.2),
        noise=NOISE,
    )
    assert restorer.config == TRegSettings(steps=3) and restorer._finish is None  # the ensemble made its own variants
    assert result.restoration_info()["ensemble"]["holdout"]["values"] > 0
