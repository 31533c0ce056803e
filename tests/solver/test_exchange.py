"""The plane exchange: stacked volumes, per-volume CG, the evidence against its dense formula, the Gibbs draw."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_treg.errors import Cancelled, InvalidInputError
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import GaussianBlur, VolumeBlur
from napari_treg.operators.heldout import HeldOut
from napari_treg.solver import exchange
from napari_treg.solver.cg import data_consistency
from napari_treg.solver.exchange import PlaneExchange, evidence_terms, gibbs_choice, look_ahead
from napari_treg.solver.sampler import tweedie


def psf(shape=(3, 3, 3), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def test_stacked_volumes_are_each_blurred_alone():
    op = VolumeBlur(psf())
    x = torch.randn(3 * 4, 2, 7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stacked = op.stacked(4)
    apart = torch.cat([op.forward(v) for v in x.split(4)])
    assert torch.allclose(stacked.forward(x), apart, atol=1e-12)
    assert torch.allclose(stacked.adjoint(x), torch.cat([op.adjoint(v) for v in x.split(4)]), atol=1e-12)
    assert not torch.allclose(op.forward(x), apart, atol=1e-3)  # unstacked, the 12 planes are one volume
    assert torch.allclose(stacked.forward(x.float()), apart.float(), atol=1e-5)  # the direct conv3d path too
    assert op.volume_planes is None and stacked.system_planes(12) == 4 and op.system_planes(12) == 12


def test_a_stacked_volume_blur_is_exactly_adjoint():
    op = VolumeBlur(psf((5, 3, 1))).stacked(3)
    gen = torch.Generator().manual_seed(2)
    x, y = (torch.randn(6, 1, 5, 8, dtype=torch.float64, generator=gen) for _ in range(2))
    lhs, rhs = (op.forward(x) * y).sum(), (x * op.adjoint(y)).sum()
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_stacked_refuses_planes_that_are_not_whole_volumes():
    with pytest.raises(InvalidInputError, match="7 planes are not whole volumes of 3"):
        VolumeBlur(psf()).stacked(3).forward(torch.zeros(7, 1, 8, 8))
    with pytest.raises(InvalidInputError, match="at least one plane"):
        VolumeBlur(psf()).stacked(0)


def test_per_plane_operators_stack_as_themselves():
    op = GaussianBlur(sigma=1.0)
    assert op.stacked(4) is op and op.system_planes(8) == 1


def test_cg_on_stacked_volumes_equals_separate_solves():
    op = VolumeBlur(psf())
    gen = torch.Generator().manual_seed(3)
    y, x0 = (torch.randn(2 * 4, 1, 6, 6, dtype=torch.float64, generator=gen) for _ in range(2))
    together = data_consistency(op.stacked(4), y, x0, 0.05, 12)
    apart = torch.cat([data_consistency(op, yv, xv, 0.05, 12) for yv, xv in zip(y.split(4), x0.split(4))])
    assert torch.allclose(together, apart, atol=1e-10)  # the same iterates: each volume's own inner products


def test_held_out_values_of_a_volume_blur_still_couple_planes():
    hidden = np.zeros((6, 6), bool)
    hidden[2, 3] = True
    held = HeldOut(VolumeBlur(psf()), hidden)
    assert held.couples_planes and held.system_planes(8) == 8
    stacked = held.stacked(4)
    x = torch.randn(8, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert stacked.system_planes(8) == 4
    assert torch.allclose(stacked.forward(x), torch.cat([held.forward(v) for v in x.split(4)]), atol=1e-12)
    assert float(stacked.forward(x)[:, :, 2, 3].abs().max()) == 0.0


def dense(op, shape) -> np.ndarray:
    size = int(np.prod(shape))
    columns = [op.forward(e.reshape(shape)).reshape(-1) for e in torch.eye(size, dtype=torch.float64)]
    return torch.stack(columns, dim=1).numpy()


def small_case(n=3, depth=3, hw=5, seed=5):
    rng = np.random.default_rng(seed)
    op = VolumeBlur(psf((3, 3, 3), seed))
    candidates = torch.from_numpy(rng.standard_normal((n, depth, 1, hw, hw)))
    y = op.forward(candidates[0]) + 0.1 * torch.from_numpy(rng.standard_normal((depth, 1, hw, hw)))
    return op, candidates, y


def test_the_evidence_terms_give_the_dense_log_evidence_of_every_assembled_volume():
    """``sum b - 1/2 sum G`` equals ``log N(y; A x, sigma^2 I + r^2 A A^T)`` up to one constant, for all 27 choices."""
    op, candidates, y = small_case()
    plan = PlaneExchange(noise=0.1, prior_sd=0.5)
    linear, gram = evidence_terms(op.stacked(3), y, candidates, plan)
    a = dense(op, (3, 1, 5, 5))
    cov = 0.1**2 * np.eye(len(a)) + plan.look_ahead_variance * a @ a.T
    inverse = np.linalg.inv(cov)
    gaps = []
    for choice in itertools.product(range(3), repeat=3):
        x = np.stack([candidates[c, k].numpy() for k, c in enumerate(choice)]).ravel()
        r = y.numpy().ravel() - a @ x
        exact = -0.5 * r @ inverse @ r
        terms = sum(linear[c, k] for k, c in enumerate(choice))
        terms -= 0.5 * sum(gram[c, k, d, m] for k, c in enumerate(choice) for m, d in enumerate(choice))
        gaps.append(exact - terms)
    assert np.ptp(gaps) < 1e-6 * np.abs(gaps).max()


def test_every_sample_takes_the_planes_the_measurement_backs():
    """Candidate 0 is the measured volume; the others differ by a lot: every sample trades all its planes to it."""
    op, candidates, y = small_case(n=4)
    y = op.forward(candidates[0])  # noise-free: decisive
    linear, gram = evidence_terms(op.stacked(3), y, candidates, PlaneExchange(noise=0.01, prior_sd=0.5))
    rng = np.random.default_rng(0)
    for own in range(4):
        assert gibbs_choice(linear, gram, own, rng).tolist() == [0, 0, 0]


def test_a_window_over_the_whole_stack_draws_from_the_exact_distribution(monkeypatch):
    """With ``WINDOW >= Z`` a sweep is one exact draw: frequencies match the normalised evidence."""
    rng = np.random.default_rng(1)
    linear = rng.normal(0, 0.7, (2, 2))
    spread = rng.normal(0, 0.3, (4, 4))
    gram = (spread @ spread.T).reshape(2, 2, 2, 2)
    log_w = np.array(
        [
            [
                linear[a, 0]
                + linear[b, 1]
                - 0.5 * sum(gram[c, k, d, m] for k, c in enumerate((a, b)) for m, d in enumerate((a, b)))
                for b in range(2)
            ]
            for a in range(2)
        ]
    )
    expected = np.exp(log_w - log_w.max())
    expected /= expected.sum()
    draws = np.zeros((2, 2))
    for _ in range(4000):
        a, b = gibbs_choice(linear, gram, 0, rng)
        draws[a, b] += 1
    assert np.abs(draws / 4000 - expected).max() < 0.03


def test_look_ahead_makes_its_model_calls_and_reuses_the_step_noise():
    prior = AnalyticPrior()
    calls = []

    def predict(z, t):
        calls.append(t)
        return prior.predict_noise(z, t, prior.embed_text([""]).expand(len(z), -1, -1)).float()

    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = predict(z, 700)
    calls.clear()
    ahead = look_ahead(prior, predict, z, 700, eps)
    assert len(calls) == exchange.LOOK_AHEAD_STEPS and 700 not in calls and ahead.shape == z.shape
    abar = prior.schedule.alphas_cumprod
    assert abs(float(abar[calls[-1]]) - exchange.LOOK_AHEAD_TO) < 0.01  # ends where abar is nearest 0.8
    calls.clear()
    late = look_ahead(prior, predict, z, 50, eps)  # already past abar 0.8: the step's own estimate
    assert calls == [] and torch.allclose(late, tweedie(z, eps, float(abar[50])))


def test_a_cancel_stops_the_evidence_solves():
    op, candidates, y = small_case()
    calls = []

    def cancel():
        calls.append(1)
        if len(calls) == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        evidence_terms(op.stacked(3), y, candidates, PlaneExchange(0.1, 0.5, cancel))
    assert len(calls) == 3  # raised inside the first solve, not after all of them


def test_trades_happen_at_the_fractions_of_the_steps():
    assert PlaneExchange(0.01, 0.2).trade_steps(100) == {40, 55, 59}
    assert PlaneExchange(0.01, 0.2).trade_steps(12) == {5, 7}
    assert PlaneExchange(0.01, 0.2).trade_steps(1) == {0}  # no step index past the last
