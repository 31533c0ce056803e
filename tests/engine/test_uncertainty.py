"""Ensembles (napari_treg.engine.ensemble) and the noise-aware last step (napari_treg.solver.posterior)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_treg import Cancelled, InvalidInputError, ensemble, restore
from napari_treg.engine.ensemble import EnsembleSettings, restorer_ensemble
from napari_treg.engine.restorer import Restorer
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import GaussianBlur, Inpainting, SuperResolution
from napari_treg.solver import TRegSettings
from napari_treg.solver.posterior import data_share, perturb_and_map

NOISE = 0.05
SIZE = 16


def dense(op, hw):
    pixels = hw[0] * hw[1]
    basis = torch.eye(pixels, dtype=torch.float64).reshape(pixels, 1, *hw)
    return op.forward(basis).reshape(pixels, -1).T.numpy()


def exact_covariance(op, hw, prior_sd):
    a = dense(op, hw)
    return np.linalg.inv(np.eye(a.shape[1]) / prior_sd**2 + a.T @ a / NOISE**2)


def left_half_missing(size=SIZE):
    missing = np.zeros((size, size), bool)
    missing[:, : size // 2] = True
    return missing


def measurement(prior, op, seed=3):
    truth, _ = prior.sample(1, 0, (SIZE, SIZE), torch.Generator().manual_seed(seed))
    y = op.forward(truth) + NOISE * torch.randn(op.forward(truth).shape, generator=torch.Generator().manual_seed(seed))
    return np.moveaxis(y[0].numpy(), 0, -1), truth[0].numpy()


# -- the maths, without a model -------------------------------------------------------------------


def test_perturb_and_map_draws_from_the_gaussian_posterior():
    """Prior draws around m through the noise-aware step have the exact posterior mean and covariance."""
    op, hw, s, draws = GaussianBlur(1.0), (8, 8), 0.2, 2000
    gen = torch.Generator().manual_seed(0)
    m = torch.zeros((1, 1, *hw))
    y = op.forward(m + s * torch.randn((1, 1, *hw), generator=gen)) + NOISE * torch.randn((1, 1, *hw), generator=gen)
    prior_draws = m + s * torch.randn((draws, 1, *hw), generator=gen)
    e = torch.randn((draws, 1, *hw), generator=gen)
    x = perturb_and_map(op, y.expand(draws, -1, -1, -1), prior_draws, NOISE, s, e, iterations=30)
    x = x.double().reshape(draws, -1)
    cov = exact_covariance(op, hw, s)
    mean = cov @ (dense(op, hw).T @ y.double().reshape(-1).numpy() / NOISE**2)
    assert np.abs(x.mean(0).numpy() - mean).max() < 4 * np.sqrt(cov.diagonal().max() / draws)
    ratio = x.var(0).numpy() / cov.diagonal()
    assert 0.9 < ratio.mean() < 1.1
    assert np.abs(ratio - 1).max() < 0.2


@pytest.mark.parametrize("op", [SuperResolution(2), GaussianBlur(1.5), Inpainting(left_half_missing(8))])
def test_data_share_matches_the_exact_posterior(op):
    hw, s = (8, 8), 0.2
    exact = 1 - np.diag(exact_covariance(op, hw, s)) / s**2
    share = data_share(op, (1, *op.measurement_hw(hw)), (1, *hw), NOISE, s, generator=torch.Generator().manual_seed(0))
    assert share.min() >= 0 and share.max() <= 1
    assert np.abs(share.reshape(-1).numpy() - exact).mean() < 0.05


# -- ensembles on the analytic prior -----------------------------------------------------------------


def test_observed_pixels_get_the_posterior_spread():
    """One class, inpainting, the default schedule: the observed pixels' spread and mean match the exact
    posterior (a plain loop over seeds has no spread there, so this fails without the noise-aware last step)."""
    prior = AnalyticPrior(classes=("disk",))
    missing = left_half_missing()
    op = Inpainting(missing)
    image, _ = measurement(prior, op)
    settings = dict(model=prior, prompt="a disk", steps=25, batch_size=16, intensity_range=(-1, 1))
    result = ensemble(image, op, samples=16, noise=NOISE, **settings)
    s2 = prior.latent_std**2
    post_var = 1 / (1 / s2 + 1 / NOISE**2)
    m = np.moveaxis(prior.means((SIZE, SIZE))[0].numpy(), 0, -1)
    post_mean = post_var * (image / NOISE**2 + m / s2)
    observed = np.broadcast_to(~missing[..., None], image.shape)
    ratio = (result.std**2 / post_var)[observed].mean()
    assert 0.7 < ratio < 1.4
    assert np.sqrt((((result.mean - post_mean) ** 2) / post_var)[observed].mean()) < 0.6
    plain = restore(np.repeat(image[None], 16, axis=0), op, **settings)
    # what the correction fixes: the default schedule's final projection leaves no spread there
    assert (plain.var(axis=0, ddof=1) / post_var)[observed].mean() < 0.01
    np.testing.assert_allclose(result.data_share[observed], 1 - post_var / s2, atol=1e-4)
    assert np.all(result.data_share[~observed] == 0)


def test_blur_ensemble_is_calibrated_under_the_default_schedule():
    """Fast calibration under the default schedule (data-first): blur sigma 1.5, one class, against the
    exact posterior. With the schedule's final projection and exact data fits in the samples the
    mean is off by ~0.7 posterior sd here (0.58 at 32x32, 200 steps, 32 samples: docs/uncertainty.md)."""
    prior = AnalyticPrior(classes=("disk",))
    op, s2 = GaussianBlur(1.5), prior.latent_std**2
    image, truth = measurement(prior, op)
    settings = dict(model=prior, prompt="a disk", steps=25, batch_size=16, intensity_range=(-1, 1))
    result = ensemble(image, op, samples=16, noise=NOISE, **settings)
    params = result.info["settings"]["params"]
    assert params["data_first"] and params["final_dc"]  # the default schedule
    cov, a = exact_covariance(op, (SIZE, SIZE), prior.latent_std), dense(op, (SIZE, SIZE))
    flat = lambda v: np.moveaxis(v, -1, 0).reshape(3, -1).astype(np.float64)  # noqa: E731
    m = prior.means((SIZE, SIZE))[0].double().numpy().reshape(3, -1)
    post_mean, post_var = (cov @ (m.T / s2 + a.T @ flat(image).T / NOISE**2)).T, np.diag(cov)[None]
    low, high = (flat(b) for b in result.interval(0.9))
    truth = truth.reshape(3, -1)
    assert 0.5 < (flat(result.std) ** 2 / post_var).mean() < 1.5
    assert ((truth >= low) & (truth <= high)).mean() > 0.8
    assert np.sqrt(((flat(result.mean) - post_mean) ** 2 / post_var).mean()) < 0.45


def test_streamed_statistics_equal_the_kept_samples():
    prior = AnalyticPrior()
    op = SuperResolution(2)
    image = measurement(prior, op)[0]
    settings = dict(model=prior, steps=8, noise=NOISE, intensity_range=(-1, 1), samples=5)
    kept = ensemble(image, op, keep_samples=True, batch_size=5, **settings)
    streamed = ensemble(image, op, keep_samples=False, batch_size=2, **settings)
    assert kept.samples is not None and kept.samples.shape == (5, *kept.mean.shape)
    assert streamed.samples is None
    np.testing.assert_allclose(kept.mean, kept.samples.mean(axis=0), atol=1e-6)
    np.testing.assert_allclose(streamed.mean, kept.mean, atol=1e-5)
    np.testing.assert_allclose(streamed.std, kept.std, atol=1e-5)
    assert np.std(kept.samples, axis=0).max() > 0.01  # the samples differ


def test_maps_shapes_text_influence_and_info():
    prior = AnalyticPrior()
    op = SuperResolution(2)
    grey = np.stack([measurement(prior, op, seed)[0].mean(axis=-1) for seed in (1, 2)])  # (2, 8, 8)
    before = grey.copy()
    result = ensemble(grey, op, model=prior, samples=3, steps=6, prompt="a square", noise=NOISE, seed=10)
    np.testing.assert_array_equal(grey, before)
    assert result.mean.shape == result.std.shape == result.data_share.shape == (2, 16, 16)
    assert result.samples.shape == (3, 2, 16, 16)
    assert result.text_influence is not None and result.text_influence.shape == (2, 16, 16)
    assert result.text_influence.max() > 0
    for name in ("mean", "std", "data_share", "text_influence"):
        assert np.isfinite(getattr(result, name)).all(), name
    low, high = result.interval(0.9)
    assert np.all(low <= result.mean) and np.all(result.mean <= high)
    info = result.info
    assert info["seeds"] == [10, 12, 14] and info["noise_source"] == "given" and info["noise"] == NOISE
    assert info["model_calls"] == 2 * 6 * 3 * 2  # two passes, 6 steps, 3 samples x 2 planes one at a time
    assert info["settings"]["params"]["prompt"] == "a square"
    without = ensemble(grey, op, model=prior, samples=2, steps=4, noise=NOISE)
    assert without.text_influence is None


def test_the_noise_is_estimated_when_not_given():
    prior = AnalyticPrior(classes=("disk",))
    op = GaussianBlur(1.5)
    image, _ = measurement(prior, op)
    result = ensemble(image, op, model=prior, samples=2, steps=4, intensity_range=(-1, 1))
    assert result.info["noise_source"].startswith("estimated")
    assert result.info["noise"] > 0


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"samples": 0}, "samples must be at least 2"),
        ({"samples": 1}, "samples must be at least 2"),
        ({"samples": 10_000}, "samples must be at most"),
        ({"noise": 0.0}, "noise must be > 0"),
        ({"noise": -1.0}, "noise must be at least 0"),
        ({"prior_sd": 0.0}, "prior_sd must be > 0"),
        ({"keep_samples": "yes"}, "keep_samples must be True or False"),
        ({"bogus": 1}, "unknown"),
    ],
)
def test_bad_input_is_refused_before_any_work(monkeypatch, keywords, message):
    monkeypatch.setattr("napari_treg.api.get_prior", lambda *a: pytest.fail("work started"))
    with pytest.raises(InvalidInputError, match=message):
        ensemble(np.zeros((16, 16), np.float32) + 0.5, GaussianBlur(1.0), model="analytic", **keywords)


def test_nan_and_too_many_samples_for_memory_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr("napari_treg.api.get_prior", lambda *a: pytest.fail("work started"))
    image = np.zeros((16, 16), np.float32)
    image[3, 4] = np.nan
    with pytest.raises(InvalidInputError, match="NaN"):
        ensemble(image, GaussianBlur(1.0), model="analytic", noise=NOISE)
    with pytest.raises(InvalidInputError, match="estimated as 0"):
        ensemble(np.full((16, 16), 0.5, np.float32), GaussianBlur(1.0), model="analytic")
    monkeypatch.setattr("napari_treg.engine.ensemble.available_host_bytes", lambda: 2**30)
    big = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    with pytest.raises(InvalidInputError, match="keep_samples=False"):
        ensemble(big, SuperResolution(8), model="analytic", samples=1000, noise=NOISE)


def test_cancel_returns_nothing_and_leaves_the_restorer_unchanged():
    prior = AnalyticPrior()
    restorer = Restorer(prior, TRegSettings(steps=10), prompt="a disk")
    cancel = threading.Event()
    events = []

    def progress(event):
        events.append(event)
        if event.step == 15:
            cancel.set()

    image = measurement(prior, GaussianBlur(1.0))[0]
    with pytest.raises(Cancelled):
        restorer_ensemble(
            restorer,
            image,
            GaussianBlur(1.0),
            options=EnsembleSettings(samples=4),
            callback=progress,
            cancel=cancel,
            noise=NOISE,
        )
    assert events[-1].step == 15 and events[-1].total == 2 * 10 * 4  # progress over both passes, all samples
    assert restorer.config == TRegSettings(steps=10) and restorer._finish is None  # the ensemble made its own variant


def test_the_ensemble_variant_shares_the_model_and_text_and_leaves_the_restorer_unchanged():
    prior = AnalyticPrior()
    restorer = Restorer(prior, TRegSettings(steps=10), prompt="a disk")
    variant = restorer.variant(TRegSettings(steps=3), finish=lambda x, y, operator, seed: x)
    assert variant.prior is prior and variant.text is restorer.text and variant.null is restorer.null
    assert variant.prompt == "a disk" and variant.config.steps == 3 and restorer.config.steps == 10
    assert restorer._finish is None and variant._finish is not None
    assert not hasattr(restorer, "finish")  # no public mutable hook


# -- the command line ----------------------------------------------------------------------------------


def test_cli_restore_with_samples_writes_the_mean_and_the_maps(tmp_path):
    import json

    from napari_treg.cli.commands import main
    from napari_treg.io import files as io

    prior = AnalyticPrior()
    image = (measurement(prior, SuperResolution(2))[0] + 1) / 2  # (8, 8, 3) in [0, 1]
    source = tmp_path / "cells.tif"
    io.write_image(source, image)
    out = tmp_path / "cells_sr.tif"
    common = ["restore", str(source), "--operator", "sr", "--factor", "2", "--model", "analytic", "--steps", "3"]
    status = main(
        [*common, "-o", str(out), "--samples", "3", "--noise", "0.05", "--prompt", "a disk"]
        + ["--keep-samples", "--info", str(tmp_path / "run.json"), "-q"]
    )
    assert status == 0
    mean = io.read_image(out)
    assert mean.shape == (16, 16, 3)
    for name in ("std", "data_share", "text_influence"):
        assert io.read_image(tmp_path / f"cells_sr.{name}.tif").shape == (16, 16, 3), name
    samples = io.read_image(tmp_path / "cells_sr.samples.tif")
    assert samples.shape == (3, 16, 16, 3)
    np.testing.assert_allclose(samples.mean(axis=0), mean, atol=1e-5)
    assert json.loads((tmp_path / "run.json").read_text())["samples"] == 3
    plain = tmp_path / "plain.tif"
    assert main([*common, "-o", str(plain), "-q"]) == 0
    assert not (tmp_path / "plain.std.tif").exists()
    assert main([*common, "-o", str(tmp_path / "bad.tif"), "--samples", "1", "-q"]) == 2
    assert main([*common, "-o", str(tmp_path / "bad.tif"), "--keep-samples", "-q"]) == 2
    assert not (tmp_path / "bad.tif").exists()
    # a prompt at guidance 0 guides nothing: no text influence is made, so none is planned or written
    unguided = tmp_path / "unguided.tif"
    assert main([*common, "-o", str(unguided), "--samples", "2", "--prompt", "a disk", "--guidance", "0", "-q"]) == 0
    assert (tmp_path / "unguided.std.tif").is_file() and not (tmp_path / "unguided.text_influence.tif").exists()


def test_a_tiled_streamed_ensemble_counts_its_progress_over_all_samples():
    image = np.random.default_rng(0).random((2, 40, 40), dtype=np.float32)
    events = []
    result = ensemble(
        image,
        SuperResolution(2),
        model="analytic",
        samples=3,
        steps=3,
        tile_size=48,
        tile_overlap=16,
        noise=NOISE,
        keep_samples=False,
        batch_size=2,
        progress=events.append,
    )
    assert result.mean.shape == result.std.shape == (2, 80, 80) and np.isfinite(result.std).all()
    assert result.info["settings"]["tiling"]["tiles"] == 4
    sampling = [e for e in events if e.phase == "sampling"]  # then the data share's probe solves
    assert [e.step for e in sampling] == list(range(1, sampling[-1].total + 1))
    assert sampling[-1].total == result.info["model_calls"]
    assert {e.phase for e in events[len(sampling) :]} == {"data share"}


def test_the_text_free_pass_reuses_the_seeds():
    """A prompt that names no class guides nowhere: with the same seeds its pass equals the text-free one."""
    prior = AnalyticPrior()
    image = measurement(prior, SuperResolution(2))[0]
    settings = dict(model=prior, samples=2, steps=5, noise=NOISE, intensity_range=(-1, 1), adaptive_negation=False)
    neutral = ensemble(image, SuperResolution(2), prompt="a photo", **settings)
    assert neutral.text_influence is not None
    assert neutral.text_influence.max() < 1e-5
    prompted = ensemble(image, SuperResolution(2), prompt="a square", **settings)
    assert prompted.text_influence.max() > 0.05


# -- the text-conflict check (solver/conflict.py), on the ensemble's prompted pass ---------------------

CONFLICT_NOISE = 0.01
#: blur sigma 1.5 px at 32x32 decides disk against square (tests/engine/test_data_first.py); at 30 steps the
#: first data-consistency steps already show it (measured: 6662 nats for "a square", -551 for "a disk")
CONFLICT_STEPS = 30


def blurred_disk() -> np.ndarray:
    from napari_treg import degrade
    from napari_treg.models.analytic import template

    return degrade(template("disk", (32, 32)), GaussianBlur(1.5), noise=CONFLICT_NOISE, seed=0)


def disk_ensemble(prompt: str, prior=None, **settings):
    settings = dict(samples=2, steps=CONFLICT_STEPS, noise=CONFLICT_NOISE, intensity_range=(0, 1)) | settings
    return ensemble(blurred_disk(), GaussianBlur(1.5), model=prior or AnalyticPrior(), prompt=prompt, **settings)


def test_an_ensemble_with_a_prompt_the_data_rule_out_is_flagged_without_an_extra_model_call(monkeypatch):
    from napari_treg.solver.conflict import FLAG_NATS, conflict_message

    prior = AnalyticPrior()
    calls = []
    predict = prior.predict_noise
    monkeypatch.setattr(prior, "predict_noise", lambda *args: calls.append(1) or predict(*args))
    flagged = disk_ensemble("a square", prior)
    conflict = flagged.info["text_conflict"]
    assert conflict["flag"] and conflict["checked"] and conflict["deficit_nats"] > FLAG_NATS
    # every sample of the prompted pass once: not the text-free pass, not the calibrated copy again
    assert conflict["units"] == conflict["samples"] == 2 and conflict["units_flagged"] == 2
    assert conflict["noise"] == CONFLICT_NOISE and conflict["noise_source"] == "given"
    assert "over the 2 samples" in conflict_message(flagged.info)
    checked_calls = len(calls)
    calls.clear()
    monkeypatch.setattr(Restorer, "conflict_log", lambda *args: None)  # the same ensemble, unchecked
    unchecked = disk_ensemble("a square", prior)
    assert len(calls) == checked_calls and flagged.info["model_calls"] == unchecked.info["model_calls"]
    np.testing.assert_array_equal(flagged.mean, unchecked.mean)


def test_an_ensemble_with_a_matching_prompt_is_checked_and_not_flagged():
    conflict = disk_ensemble("a disk").info["text_conflict"]
    assert conflict["checked"] and not conflict["flag"] and conflict["deficit_nats"] < 0


def test_a_streamed_ensemble_checks_every_sample_with_its_estimated_noise():
    """Streamed one sample per call, with the noise estimated: the same evidence as the kept ensemble's."""
    kept = disk_ensemble("a square", samples=3, noise=None)
    streamed = disk_ensemble("a square", samples=3, noise=None, keep_samples=False, batch_size=1)
    for result in (kept, streamed):
        conflict = result.info["text_conflict"]
        assert conflict["flag"] and conflict["units"] == 3
        assert conflict["noise"] == result.info["noise"] and conflict["noise_source"] == result.info["noise_source"]
    assert streamed.info["text_conflict"]["deficit_nats"] == pytest.approx(kept.info["text_conflict"]["deficit_nats"])


def test_an_ensemble_without_a_used_prompt_says_why_it_was_not_checked():
    assert disk_ensemble("", steps=4).info["text_conflict"] == {"flag": False, "checked": False, "reason": "no prompt"}
    conflict = disk_ensemble("a square", steps=4, guidance=0.0).info["text_conflict"]
    assert conflict == {"flag": False, "checked": False, "reason": "guidance 0: the prompt is not used"}


def test_cli_restore_with_samples_says_text_conflict(tmp_path, capsys):
    import json

    from napari_treg.cli.commands import main
    from napari_treg.io import files as io

    source = io.write_image(tmp_path / "blurred.tif", blurred_disk())
    argv = ["restore", str(source), "--operator", "gauss", "--sigma", "1.5", "--model", "analytic"]
    argv += ["--device", "cpu", "--noise", str(CONFLICT_NOISE), "--steps", str(CONFLICT_STEPS), "--samples", "2"]
    assert main([*argv, "-o", str(tmp_path / "a.tif"), "--prompt", "a square", "--info", str(tmp_path / "a.json")]) == 0
    line = capsys.readouterr().err
    assert "wrote the mean of 2 restorations" in line and "TEXT CONFLICT" in line
    assert json.loads((tmp_path / "a.json").read_text())["text_conflict"]["flag"]
    assert main([*argv, "-o", str(tmp_path / "b.tif"), "--prompt", "a disk"]) == 0
    line = capsys.readouterr().err
    assert "wrote the mean of 2 restorations" in line and "TEXT CONFLICT" not in line
