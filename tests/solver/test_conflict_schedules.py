"""The text-conflict check at every schedule length, on the exact analytic prior.

The check reads the prompt's cost in measurement fit where the class is still open in the latent
(solver/conflict.py). Before, it took the median over "the first 4 data-consistency steps", and at
short schedules the later of those come after the latent has committed, where the prompt changes
nothing and the deficit is exactly 0: a prompt the data rule out read 0 nats at 8 and 12 steps.
"""

from __future__ import annotations

import math

import pytest
import torch

import napari_treg
from napari_treg.models.analytic import AnalyticPrior, template
from napari_treg.operators import Denoising, GaussianBlur, SuperResolution
from napari_treg.solver.conflict import FLAG_NATS, ConflictCheck, ConflictLog, conflict_message
from napari_treg.solver.timesteps import Step

NOISE = 0.01
HW = (32, 32)
BLUR = GaussianBlur(1.5)  # decides disk against square at 32x32 (tests/engine/test_data_first.py)


def conflict(op, prompt: str, steps: int, **settings) -> dict:
    y = napari_treg.degrade(template("disk", HW), op, noise=NOISE, seed=0)
    _, info = napari_treg.restore(
        y, op, prompt=prompt, model="analytic", noise=NOISE, intensity_range=(0, 1), steps=steps, return_info=True,
        **settings,
    )  # fmt: skip
    return info["text_conflict"]


@pytest.mark.parametrize("steps", [2, 4, 8, 12, 20])
def test_a_prompt_the_data_rule_out_is_flagged_at_short_schedules(steps):
    found = conflict(BLUR, "a square", steps)
    assert found["checked"] and found["flag"] and found["deficit_nats"] > FLAG_NATS
    assert found["units_unchecked"] == 0 and "reason" not in found
    assert "Text conflict" in conflict_message({"text_conflict": found})


@pytest.mark.parametrize("steps", [4, 8, 12])
def test_a_matching_prompt_and_ambiguous_data_are_not_flagged_at_short_schedules(steps):
    matching = conflict(BLUR, "a disk", steps)
    assert matching["checked"] and not matching["flag"] and matching["deficit_nats"] < 0
    ambiguous = conflict(SuperResolution(16), "a square", steps)  # the data leave the class open
    assert ambiguous["checked"] and not ambiguous["flag"] and abs(ambiguous["deficit_nats"]) < FLAG_NATS


def test_an_ensemble_at_a_short_schedule_flags_every_sample():
    y = napari_treg.degrade(template("disk", HW), BLUR, noise=NOISE, seed=0)
    result = napari_treg.ensemble(
        y, BLUR, samples=2, noise=NOISE, model="analytic", prompt="a square", steps=8, intensity_range=(0, 1)
    )
    found = result.info["text_conflict"]
    assert found["flag"] and found["units_flagged"] == found["samples"] == 2


def test_a_run_without_evidence_says_so_instead_of_reading_zero():
    # one step: t = 1, where the prompt does not change the estimate
    found = conflict(BLUR, "a square", 1)
    assert not found["checked"] and not found["flag"] and found["deficit_nats"] is None
    assert found["units_unchecked"] == 1 and found["reason"].startswith("no evidence")
    # no data consistency at all: nothing is read
    found = conflict(BLUR, "a square", 8, dc_every=0)
    reason = "no data-consistency step at high noise (the first step, or abar_t <= 0.06) in 8 steps"
    assert not found["checked"] and found["reason"] == reason
    assert conflict_message({"text_conflict": found}) is None


# -- the callback itself, on hand-made steps --------------------------------------------------


def _state(index: int, a: float, eps_free: torch.Tensor, eps_text: torch.Tensor, z: torch.Tensor) -> dict:
    step = Step(index, 999 - index, a, a, True)
    return {"i": index, "total": 10, "step": step, "z_t": z, "eps_free": eps_free, "eps_text": eps_text}


def _check_and_latent() -> tuple[ConflictCheck, torch.Tensor]:
    prior = AnalyticPrior()
    y = torch.zeros(2, 3, 4, 4)  # two samples measured as all-zero images
    return ConflictCheck(prior, Denoising(), y, noise=0.1), torch.zeros(2, 3, 4, 4)


def test_steps_where_the_prompt_changes_nothing_do_not_count_as_agreement():
    check, z = _check_and_latent()
    a = 0.01
    eps = torch.zeros_like(z)
    pulled = eps.clone()
    pulled[0] = -0.01  # the prompt moves sample 0's estimate away from the measurement; sample 1's not at all
    check(_state(0, a, eps, pulled, z))
    for index in (3, 6):  # committed: both estimates the same
        check(_state(index, a, eps, eps, z))
    evidence = check.evidence()
    x_text = 0.01 * math.sqrt(1 - a) / math.sqrt(a)  # tweedie of the pulled noise, per pixel
    assert evidence[0].item() == pytest.approx(48 * x_text**2 / (2 * 0.1**2), rel=1e-4)
    assert math.isnan(evidence[1].item())  # no evidence for sample 1, not a deficit of 0
    log = ConflictLog(0.1, "given")
    log.add(check)
    summary = log.summary()
    assert summary["units"] == summary["units_unchecked"] == 1 and summary["checked"]
    reason = "no evidence: the prompt did not change the estimate at the 3 data-consistency steps at high noise"
    assert summary["reason"] == reason


def test_only_high_noise_steps_and_at_most_four_are_read():
    check, z = _check_and_latent()
    eps, pulled = torch.zeros_like(z), torch.full_like(z, -0.01)
    check(_state(0, 0.5, eps, pulled, z))  # the first step is read at any noise level: its latent is the initial noise
    check(_state(3, 0.07, eps, pulled, z))  # past the first, abar_t above 0.06: not read
    assert len(check.deficits) == 1
    for index in (6, 9, 12, 15, 18):
        check(_state(index, 0.05, eps, pulled, z))
    assert len(check.deficits) == 4 and check.noisy_dc_steps == 6


def test_a_run_without_a_noise_level_says_why_it_was_not_checked():
    log = ConflictLog(None, "not estimated: the measurement is too small")
    log.add(log.check(AnalyticPrior(), Denoising(), torch.zeros(1, 3, 4, 4)))
    summary = log.summary()
    assert not summary["checked"] and not summary["flag"]
    assert summary["reason"] == "no noise level (not estimated: the measurement is too small)"


def test_the_cli_and_the_widget_say_why_a_run_was_not_checked():
    from napari_treg.solver.conflict import unchecked_message

    found = conflict(BLUR, "a square", 1)
    assert unchecked_message({"text_conflict": found}).startswith("The text-conflict check was not made: no evidence")
    assert unchecked_message({"text_conflict": conflict(BLUR, "a disk", 12)}) is None  # checked
    assert unchecked_message({"text_conflict": {"flag": False, "checked": False, "reason": "no prompt"}}) is None
    partly = {"units": 3, "units_unchecked": 1, "reason": "no evidence: ...", "flag": False}
    assert "for 1 of 4 planes/tiles" in unchecked_message({"text_conflict": partly})


def test_the_cli_result_line_says_why_a_run_was_not_checked(tmp_path, capsys):
    import numpy as np

    from napari_treg.cli.commands import main

    y = napari_treg.degrade(template("disk", HW), BLUR, noise=NOISE, seed=0)
    np.save(tmp_path / "y.npy", np.asarray(y, np.float32))
    common = ["restore", str(tmp_path / "y.npy"), "--operator", "gauss", "--sigma", "1.5", "--model", "analytic"]
    assert main([*common, "-o", str(tmp_path / "x.npy"), "--prompt", "a square", "--steps", "1"]) == 0
    assert "the text-conflict check was not made: no evidence" in capsys.readouterr().err  # the result line


def test_the_text_conflict_summary_is_one_object_written_once():
    """``info["text_conflict"]`` is :class:`TextConflict` as JSON: the same keys in the same order as before
    the object existed, read back unchanged, and the unchecked form of a run the check does not apply to."""
    from napari_treg.solver.conflict import ConflictLog, TextConflict, unchecked

    log = ConflictLog(0.05, "given")
    log.deficits = [12.0, 80.0]
    log.note("no evidence at 1 step")
    summary = log.summary()
    assert list(summary) == [
        "flag", "checked", "deficit_nats", "units_flagged", "units", "units_unchecked",
        "threshold_nats", "noise", "noise_source", "reason",
    ]  # fmt: skip
    assert summary["flag"] and summary["units_flagged"] == 1 and summary["deficit_nats"] == 80.0
    conflict = TextConflict.of({"text_conflict": summary})
    assert conflict.flag and conflict.units == 2 and conflict.as_dict() == summary
    assert unchecked("no prompt") == {"flag": False, "checked": False, "reason": "no prompt"}
    assert TextConflict.of({}) == TextConflict() and not TextConflict.of({}).flag
    ensemble = TextConflict.of({"text_conflict": {**summary, "samples": 4}})
    assert ensemble.samples == 4 and ensemble.as_dict() == {**summary, "samples": 4}
