"""Text resolves ambiguity, on the exact analytic prior (the prompt and null text of a run,
``napari_treg.solver.text``, through the sampler's classifier-free guidance).

Where the measurement leaves the class open (SR x16, inpainting that hides the object), without
text both classes appear about half each (the exact class posterior is 1/2); the prompt picks the
class, also against the measurement, with the paper's and the faithful schedule. A flipped guidance
sign is detected. (Part of the paper's claims, marker ``claims``; was tests/test_claims.py.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from claims_helpers import Z, flipped_guide, measure, solve

from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import Inpainting, SuperResolution
from napari_treg.solver import TRegSettings, sampler, schedule_settings

pytestmark = pytest.mark.claims  # the paper's claims (docs/validation.md)

# -- claim: text resolves ambiguity ----------------------------------------------------------------

HW_AMB = (32, 32)
N_AMB = 32


def _hiding_mask() -> np.ndarray:
    mask = np.zeros(HW_AMB, bool)
    mask[5:-5, 5:-5] = True  # hides the whole object
    return mask


AMBIGUOUS = {"SR x16": SuperResolution(16), "inpainting hiding the object": Inpainting(_hiding_mask())}


def ambiguous_case(op, true_class: int, prompts: list[str], config: TRegSettings) -> torch.Tensor:
    """Classes of the restorations of one measurement of ``true_class``, one sample per prompt."""
    prior = AnalyticPrior()
    x, _ = prior.sample(1, true_class, HW_AMB, torch.Generator().manual_seed(5))
    y = measure(op, x, seed=6).expand(len(prompts), -1, -1, -1)
    return prior.classify(solve(prior, y, op, HW_AMB, prompts, config, seed=7))


@pytest.mark.parametrize("true_class", [0, 1])
@pytest.mark.parametrize("name", list(AMBIGUOUS))
def test_without_text_both_classes_appear(name, true_class):
    labels = ambiguous_case(AMBIGUOUS[name], true_class, [""] * 2 * N_AMB, TRegSettings(guidance=0.0))
    fraction = labels.float().mean().item()
    # the exact class posterior is 1/2 (the measurements of both classes agree to << noise)
    assert abs(fraction - 0.5) < Z * math.sqrt(0.25 / (2 * N_AMB))


@pytest.mark.parametrize("schedule", ["paper", "faithful"])
@pytest.mark.parametrize("true_class", [0, 1])
@pytest.mark.parametrize("name", list(AMBIGUOUS))
def test_the_prompt_picks_the_class_even_against_the_measurement(name, true_class, schedule):
    prompts = ["a disk"] * N_AMB + ["a square"] * N_AMB
    labels = ambiguous_case(AMBIGUOUS[name], true_class, prompts, TRegSettings(**schedule_settings(schedule)))
    assert (labels[:N_AMB] == 0).float().mean() >= 0.95
    assert (labels[N_AMB:] == 1).float().mean() >= 0.95


def test_prompt_claim_detects_a_flipped_guidance_sign(monkeypatch):
    monkeypatch.setattr(sampler, "guide", flipped_guide)
    labels = ambiguous_case(AMBIGUOUS["SR x16"], 0, ["a disk"] * N_AMB, TRegSettings())
    assert (labels == 0).float().mean() < 0.95
