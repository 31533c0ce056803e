"""``napari_treg.restore`` with the exact analytic prior follows the prompt (the paper's claim, end to
end through the public API; marker ``claims``; was tests/test_claims.py)."""

from __future__ import annotations

import pytest
import torch
from claims_helpers import NOISE

from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import SuperResolution

pytestmark = pytest.mark.claims  # the paper's claims (docs/validation.md)


def test_restore_with_the_analytic_prior_follows_the_prompt():
    """The public API, end to end: x16 SR of a disk, restored as a disk or as a square on request."""
    import napari_treg
    from napari_treg.models.analytic import template

    prior = AnalyticPrior()
    op = SuperResolution(16)
    y = napari_treg.degrade(template("disk", (64, 64)), op, noise=NOISE, seed=0)
    for k, prompt in enumerate(["a disk", "a square"]):
        out = napari_treg.restore(y, op, prompt=prompt, model=prior, seed=0)
        assert out.shape == (64, 64)
        image = torch.from_numpy(2 * out - 1).expand(1, 3, -1, -1)
        assert int(prior.classify(image)) == k
