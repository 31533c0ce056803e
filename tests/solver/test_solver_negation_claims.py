"""Adaptive negation on the exact analytic prior (``napari_treg.solver.negation`` in the sampler).

Each update lowers the similarity of the null text to the estimate and moves it away from the class
the estimates show; its state stays finite in half precision; turning it off changes only what it
should. (Part of the paper's claims, marker ``claims``; was tests/test_claims.py.)
"""

from __future__ import annotations

import pytest
import torch
from claims_helpers import measure, solve

from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import SuperResolution
from napari_treg.solver import TRegSettings, sampler
from napari_treg.solver.negation import AdaptiveNegation

pytestmark = pytest.mark.claims  # the paper's claims (docs/validation.md)

HW_NEG = (32, 32)


class _Recorder(AdaptiveNegation):
    """AdaptiveNegation that records the similarity before and after each update."""

    log: list = []

    def update(self, image_embedding):
        f = image_embedding.detach().float()
        before = self.similarity(f, self.null.detach())
        null = super().update(image_embedding)
        _Recorder.log.append((before, self.similarity(f, null), f, null.clone()))
        return null


def test_negation_lowers_the_similarity_and_the_shown_class_weight(monkeypatch):
    _Recorder.log = []
    monkeypatch.setattr(sampler, "AdaptiveNegation", _Recorder)
    prior = AnalyticPrior()
    op = SuperResolution(4)
    x, _ = prior.sample(8, 0, HW_NEG, torch.Generator().manual_seed(8))
    solve(prior, measure(op, x), op, HW_NEG, ["a disk"] * 8, TRegSettings())
    assert len(_Recorder.log) == 57
    for before, after, _, _ in _Recorder.log:
        assert torch.all(after < before)
    # the estimates show disks, so the null text moves away from "disk"
    weights = prior.class_log_weights(_Recorder.log[-1][3]).exp()
    assert torch.all(weights[:, 0] < 0.4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_negation_state_stays_finite_in_half_precision(monkeypatch, dtype):
    _Recorder.log = []
    monkeypatch.setattr(sampler, "AdaptiveNegation", _Recorder)
    prior = AnalyticPrior(dtype=dtype)
    op = SuperResolution(4)
    x, labels = prior.sample(4, None, HW_NEG, torch.Generator().manual_seed(9))
    out = solve(prior, measure(op, x), op, HW_NEG, [prior.classes[k] for k in labels], TRegSettings())
    assert torch.isfinite(out).all()
    assert torch.equal(prior.classify(out), labels)
    for _, after, _, null in _Recorder.log:
        assert null.dtype == torch.float32 and torch.isfinite(null).all() and torch.isfinite(after).all()


def test_turning_negation_off_changes_only_what_it_should(monkeypatch):
    prior = AnalyticPrior()
    op = SuperResolution(4)
    x, _ = prior.sample(4, 0, HW_NEG, torch.Generator().manual_seed(10))
    y = measure(op, x)
    prompts = ["a disk"] * 4
    on, off = TRegSettings(), TRegSettings(adaptive_negation=False)
    # no DC step, no negation step: identical
    no_dc_on = solve(prior, y, op, HW_NEG, prompts, TRegSettings(dc_every=0))
    assert torch.equal(
        no_dc_on, solve(prior, y, op, HW_NEG, prompts, TRegSettings(dc_every=0, adaptive_negation=False))
    )
    # a single-class prior ignores class weights, so moving the null text changes nothing else
    single = AnalyticPrior(classes=("disk",))
    assert torch.equal(solve(single, y, op, HW_NEG, prompts, on), solve(single, y, op, HW_NEG, prompts, off))
    # off: the model sees the original null text at every step; on: a moved one after the first DC step
    seen = []
    original = AnalyticPrior.predict_noise

    def spy(self, z, t, text):
        seen.append(text[: len(text) // 2].clone())
        return original(self, z, t, text)

    monkeypatch.setattr(AnalyticPrior, "predict_noise", spy)
    null = prior.embed_text([""] * 4)
    solve(prior, y, op, HW_NEG, prompts, off)
    assert all(torch.equal(u, null) for u in seen)
    seen.clear()
    solve(prior, y, op, HW_NEG, prompts, on)
    assert torch.equal(seen[0], null) and not torch.equal(seen[-1], null)
