"""Ensembles a user can trust (issue 33): numbers that do not depend on how the samples are split into
calls, cancel in every long phase, memory counted as allocated, and refusals that name the user's settings.

Analytic prior, 24-40 px images, a few steps.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

from napari_treg import Cancelled, InvalidInputError, ensemble
from napari_treg.cli.commands import ProgressBar
from napari_treg.engine import ensemble as engine_ensemble
from napari_treg.engine.calibration import ENSEMBLE_DC_UNTIL
from napari_treg.engine.restore_settings import RestoreSettings
from napari_treg.engine.restorer import DATA_SHARE, SAMPLING, Progress, RunSettings, prepare
from napari_treg.operators import GaussianBlur, Inpainting
from napari_treg.solver import posterior

NOISE = 0.05
FAST = dict(model="analytic", device="cpu", steps=5, seed=3, noise=NOISE)


def image(size=40, seed=0):
    return np.random.default_rng(seed).random((size, size)).astype(np.float32)


def missing(size=40):
    mask = np.zeros((size, size), bool)
    mask[5:20, 8:30] = True
    return mask


# -- 2. tiled ensembles do not depend on keep_samples or batch_size -----------------------------------------


@pytest.mark.parametrize("operator", [GaussianBlur(1.0), Inpainting(missing())], ids=["blur", "inpainting"])
def test_a_tiled_ensemble_does_not_depend_on_keep_samples_or_batch_size(operator):
    """The tiles of sample k used seeds that depended on how many samples shared a call (0.08-0.2 apart)."""
    tiled = dict(FAST, samples=3, tile_size=24, tile_overlap=8)
    first = ensemble(image(), operator, keep_samples=True, batch_size=1, **tiled)
    for keep, batch_size in [(False, 1), (False, 3), (True, 3)]:
        other = ensemble(image(), operator, keep_samples=keep, batch_size=batch_size, **tiled)
        np.testing.assert_allclose(other.mean, first.mean, rtol=0, atol=1e-5)
        np.testing.assert_allclose(other.std, first.std, rtol=0, atol=1e-5)
    assert first.info["settings"]["tiling"]["tiles"] == 4


def test_tiled_samples_use_distinct_seeds_for_every_tile_and_sample():
    run = prepare(image(), GaussianBlur(1.0), RunSettings(seed=7, tile_size=24, tile_overlap=8))
    seeds = [
        engine_ensemble.replicate(run, first, 1, 3).unit_seed(unit) for first in range(3) for unit in range(4)
    ]  # 3 samples, one per call, 4 tiles each
    together = [engine_ensemble.replicate(run, 0, 3, 3).unit_seed(unit) for unit in range(12)]
    assert sorted(seeds) == sorted(together) == list(range(7, 7 + 12))


def test_the_kept_std_equals_numpys():
    kept = np.random.default_rng(1).random((5, 2, 1, 8, 8)).astype(np.float32)
    mean, std = engine_ensemble.statistics(None, kept)
    np.testing.assert_array_equal(mean, kept.mean(axis=0, dtype=np.float64))
    np.testing.assert_array_equal(std, kept.std(axis=0, ddof=1, dtype=np.float64))


# -- 3. cancel reaches the data share and the last step -------------------------------------------------------


@pytest.mark.parametrize("phase", ["data_share", "perturb_and_map"])
def test_a_cancel_during_the_last_phases_stops_within_one_cg_iteration(monkeypatch, phase):
    """A cancel set while the data share's probes (or the noise-aware last step) are solved stops them: before,
    the probes ran to the end and the result came back (65 s later on a large image)."""
    cancel = threading.Event()
    original = getattr(engine_ensemble, phase)
    after_cancel = []

    def cancelled_then_solved(*args, **kwargs):
        cancel.set()
        operator = args[0]
        counting = CountingOperator(operator, after_cancel)
        return original(counting, *args[1:], **kwargs)

    monkeypatch.setattr(engine_ensemble, phase, cancelled_then_solved)
    started = time.perf_counter()
    with pytest.raises(Cancelled):
        ensemble(image(24), GaussianBlur(1.0), samples=2, cancel=cancel, **FAST)
    assert time.perf_counter() - started < 5
    assert len(after_cancel) <= 2  # the right-hand side and at most one CG iteration


class CountingOperator:
    """An operator that records every normal-operator application (one per CG iteration)."""

    def __init__(self, operator, log):
        self.operator, self.log = operator, log

    def normal(self, x):
        self.log.append(1)
        return self.operator.normal(x)

    def __getattr__(self, name):
        return getattr(self.operator, name)


# -- 4. the memory guard counts what is allocated ------------------------------------------------------------


def test_the_memory_estimate_counts_the_kept_samples_their_copy_and_the_statistics():
    run = prepare(image(32), GaussianBlur(1.0), RunSettings())
    values = 32 * 32
    kept = engine_ensemble.ensemble_host_bytes(run, engine_ensemble.EnsembleSettings(samples=8, keep_samples=True))
    streamed = engine_ensemble.ensemble_host_bytes(run, engine_ensemble.EnsembleSettings(samples=8, keep_samples=False))
    assert kept - streamed == 8 * values * (4 + 4)  # the samples and their copy in the image's layout
    assert streamed >= values * 3 * 8  # mean, m2 and a temporary in float64


def test_a_streamed_tiled_ensemble_needs_the_same_memory_for_any_number_of_samples(monkeypatch):
    """Streamed and tiled, one sample at a time: the memory is that of one sample's arrays and the data share's
    probes, whatever the number of samples; kept, it grows with them and is refused where it does not fit."""
    big = image(512)
    options = RunSettings(tile_size=128, tile_overlap=16, noise=NOISE)
    run = prepare(big, GaussianBlur(1.0), options)

    def needed(samples, keep):
        return engine_ensemble.ensemble_host_bytes(run, engine_ensemble.EnsembleSettings(samples, keep))

    assert needed(2, False) == needed(4096, False)
    monkeypatch.setattr(
        engine_ensemble, "available_host_bytes", lambda: int(2.4 * needed(64, False))
    )  # 1.2x of it may be used
    engine_ensemble.check_ensemble(run, engine_ensemble.EnsembleSettings(64, False))  # fits
    with pytest.raises(InvalidInputError, match="keep_samples=False"):
        engine_ensemble.check_ensemble(run, engine_ensemble.EnsembleSettings(64, True))


# -- 5. up-front refusals in the user's words ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keywords", "named", "not_named"),
    [
        ({"noise": 1e-300}, "noise must be > 0 (at least 1e-06)", "cg_lambda"),
        ({"noise": 0.2, "prior_sd": 0.001}, "noise 0.2 is more than 100 times prior_sd 0.001", "cg_lambda"),
        ({"noise": 1e-300, "schedule": "paper"}, "noise must be > 0", "division"),
    ],
)
def test_extreme_noise_and_prior_sd_get_one_line_naming_them_before_any_work(monkeypatch, keywords, named, not_named):
    monkeypatch.setattr("napari_treg.api.get_prior", lambda *a: pytest.fail("work started"))
    with pytest.raises(InvalidInputError) as raised:
        ensemble(image(16), GaussianBlur(1.0), samples=2, **{**FAST, **keywords})
    message = str(raised.value)
    assert named in message and not_named not in message and "\n" not in message


def test_a_prior_sd_from_the_model_is_checked_against_the_noise_too():
    with pytest.raises(InvalidInputError, match=r"prior_sd \(not given: the model's own"):
        ensemble(image(16), GaussianBlur(1.0), samples=2, **{**FAST, "noise": 90.0})


def test_a_tiny_but_usable_noise_works():
    result = ensemble(image(16), GaussianBlur(1.0), samples=2, **{**FAST, "noise": 1e-6})
    assert np.isfinite(result.mean).all() and np.isfinite(result.std).all()


@pytest.mark.parametrize("name", ["method", "schedule", "steps", "guidance", "seed"])
def test_typed_settings_refuse_arrays_with_one_line(name):
    value = {"method": "treg", "schedule": "paper", "steps": 4, "guidance": 2.0, "seed": 1}[name]
    with pytest.raises(InvalidInputError, match=f"{name} must be one value, not an array"):
        RestoreSettings.from_values({name: np.array([value, value])})
    with pytest.raises(InvalidInputError, match=name):
        RestoreSettings.from_values({name: np.array([value])})


def test_an_explicit_cg_lambda_replaced_under_data_first_is_warned_and_recorded():
    with pytest.warns(UserWarning, match=r"in place of the cg_lambda 0.01 given"):
        result = ensemble(image(16), GaussianBlur(1.0), samples=2, cg_lambda=0.01, **FAST)
    replaced = result.info["replaced"]["cg_lambda"]
    assert replaced["given"] == 0.01 and replaced["used"] == pytest.approx((NOISE / result.info["prior_sd"]) ** 2)


def test_the_samples_take_no_data_step_after_the_ensembles_share_of_the_steps():
    """ENSEMBLE_DC_UNTIL caps dc_until (a later data step would be counted again by the last step); a smaller
    one given is kept, a larger one given is warned about and recorded."""
    run = dict(samples=2, dc_every=1, **{**FAST, "steps": 10})
    with pytest.warns(UserWarning, match=r"dc_until = 0.6 in place of the dc_until 1 given"):
        late = ensemble(image(16), GaussianBlur(1.0), dc_until=1.0, **run)
    assert late.info["replaced"]["dc_until"] == {"given": 1.0, "used": ENSEMBLE_DC_UNTIL}
    capped = ensemble(image(16), GaussianBlur(1.0), dc_until=ENSEMBLE_DC_UNTIL, **run)
    np.testing.assert_array_equal(late.mean, capped.mean)
    early = ensemble(image(16), GaussianBlur(1.0), dc_until=0.3, **run)
    assert "dc_until" not in early.info["replaced"]
    assert np.abs(early.mean - capped.mean).max() > 1e-3  # the smaller share given is used


def test_the_data_share_reports_its_probe_solves_after_the_sampling(monkeypatch):
    """A large image's data share is many probe solves (minutes on a CPU): they come as progress of their own."""
    monkeypatch.setattr(posterior, "PROBE_VALUES", 16 * 16 * 3 * 16)  # 16 probes per solve: 4 solves
    events = []
    ensemble(image(16), GaussianBlur(1.0), samples=2, progress=events.append, **FAST)
    sampling = [event for event in events if event.phase == SAMPLING]
    assert sampling and events[: len(sampling)] == sampling and sampling[-1].step == sampling[-1].total
    share = events[len(sampling) :]
    assert [(e.phase, e.step, e.total, e.plane, e.planes) for e in share] == [
        (DATA_SHARE, k, 4, 1, 1) for k in (1, 2, 3, 4)
    ]


def test_the_command_line_shows_the_data_share_in_a_bar_of_its_own(capsys):
    with ProgressBar(desc="restore x2") as bar:
        for step in (1, 2):
            bar(Progress(step, 2, 1, 1))
        bar(Progress(1, 3, 1, 1, phase=DATA_SHARE))
    err = capsys.readouterr().err
    assert "restore x2: 100%" in err and "restore x2: data share:  33%" in err and "1/3 [" in err


def test_the_default_cg_lambda_is_replaced_silently_and_recorded():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        result = ensemble(image(16), GaussianBlur(1.0), samples=2, **FAST)
    assert "cg_lambda" in result.info["replaced"]
    paper = ensemble(image(16), GaussianBlur(1.0), samples=2, schedule="paper", cg_lambda=0.01, **FAST)
    assert "cg_lambda" not in paper.info["replaced"]  # the paper's schedule keeps it


@pytest.mark.parametrize("schedule", ["paper", "data-first"])
def test_the_samples_settings_are_those_the_ensemble_reports(schedule):
    """``sample_settings`` (also used by benchmarks/calibration.py) is what an ensemble runs its samples with."""
    from napari_treg.solver.schedules import method_config

    used = engine_ensemble.sample_settings(method_config(schedule, {}), noise=NOISE, prior_sd=0.2)
    result = ensemble(image(16), GaussianBlur(1.0), samples=2, schedule=schedule, prior_sd=0.2, **FAST)
    assert used.final_dc is False and used.dc_until == ENSEMBLE_DC_UNTIL
    for name, change in result.info["replaced"].items():
        assert change["used"] == pytest.approx(getattr(used, name))
    expected = (NOISE / 0.2) ** 2 if schedule == "data-first" else method_config(schedule, {}).cg_lambda
    assert used.cg_lambda == pytest.approx(expected)
