"""Per-value noise in the solvers: the weighted data step, perturb-and-MAP, the data share and the conflict deficit."""

import numpy as np
import pytest
import torch

from napari_treg.operators import Denoising, GaussianBlur
from napari_treg.solver.cg import data_consistency
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.noise_weights import NoiseVariance
from napari_treg.solver.posterior import data_share, perturb_and_map
from napari_treg.solver.sampler import data_step

VARIANCE = NoiseVariance(slope=0.02, intercept=0.021, floor=0.001)


def dense(op, hw):
    pixels = hw[0] * hw[1]
    basis = torch.eye(pixels, dtype=torch.float64).reshape(pixels, 1, *hw)
    return op.forward(basis).reshape(pixels, -1).T.numpy()


def test_variance_is_clipped_at_the_floor_and_weights_are_relative_to_it():
    values = torch.tensor([-5.0, 0.0, 1.0])
    np.testing.assert_allclose(VARIANCE.of(values).numpy(), [0.001, 0.021, 0.041], rtol=1e-6)
    np.testing.assert_allclose(VARIANCE.weights(values).numpy(), [1.0, 0.001 / 0.021, 0.001 / 0.041], rtol=1e-6)


def test_the_weighted_solve_is_the_weighted_least_squares_solution():
    op, hw = GaussianBlur(1.0), (8, 8)
    rng = np.random.default_rng(0)
    y = torch.from_numpy(rng.standard_normal((1, 1, *hw)))
    x0 = torch.from_numpy(rng.standard_normal((1, 1, *hw)))
    w = torch.from_numpy(rng.uniform(0.05, 1.0, (1, 1, *hw)))
    lam = 0.1
    solved = data_consistency(op, y, x0, lam, 200, w)
    a = dense(op, hw)
    wv = w.numpy().ravel()
    expected = np.linalg.solve(
        a.T @ (wv[:, None] * a) + lam * np.eye(64), a.T @ (wv * y.numpy().ravel()) + lam * x0.numpy().ravel()
    )
    np.testing.assert_allclose(solved.numpy().ravel(), expected, atol=1e-8)
    plain = data_consistency(op, y, x0, lam, 200)
    assert not np.allclose(plain.numpy(), solved.numpy(), atol=1e-3)  # the weights change the answer


def test_the_data_step_takes_the_variance_at_the_current_estimate_not_at_y():
    x0 = torch.full((1, 1, 4, 4), 0.5)
    y = torch.full((1, 1, 4, 4), -2.0)  # at y the variance would be the floor (weight 1)
    config = TRegSettings(cg_lambda=0.01, cg_iterations=20)
    x = data_step(Denoising(), y, x0, config, VARIANCE)
    w = VARIANCE.floor / (VARIANCE.slope * 0.5 + VARIANCE.intercept)
    np.testing.assert_allclose(x.numpy(), (w * -2.0 + 0.01 * 0.5) / (w + 0.01), rtol=1e-5)
    assert torch.equal(data_step(Denoising(), y, x0, config, None), data_consistency(Denoising(), y, x0, 0.01, 20))


def test_a_constant_variance_is_the_single_gaussian_level():
    op = GaussianBlur(1.0)
    rng = np.random.default_rng(1)
    y, x, e = (torch.from_numpy(rng.standard_normal((2, 1, 8, 8)).astype(np.float32)) for _ in range(3))
    flat = NoiseVariance(slope=0.0, intercept=0.04, floor=0.04)
    weighted = perturb_and_map(op, y, x, 0.2, 0.5, e, iterations=60, variance=flat)
    plain = perturb_and_map(op, y, x, 0.2, 0.5, e, iterations=60)
    np.testing.assert_allclose(weighted.numpy(), plain.numpy(), atol=1e-5)


def test_perturb_and_map_draws_each_value_with_its_own_variance():
    """Denoising: the posterior is per value, x = (x_p / tau^2 + (y + sd e) / var) / (1 / tau^2 + 1 / var), with
    var taken at the data-consistent estimate (the same solve without the perturbation)."""
    tau = 0.3
    x_p = torch.tensor([[[[-1.0, 0.0, 0.5, 1.0]]]])
    y = torch.tensor([[[[-0.9, 0.1, 0.4, 1.2]]]])
    e = torch.tensor([[[[0.3, -1.0, 2.0, 0.5]]]])
    drawn = perturb_and_map(Denoising(), y, x_p, 0.0, tau, e, iterations=30, variance=VARIANCE)
    first = VARIANCE.of(x_p)
    var = VARIANCE.of((x_p / tau**2 + y / first) / (1 / tau**2 + 1 / first))
    expected = (x_p / tau**2 + (y + var.sqrt() * e) / var) / (1 / tau**2 + 1 / var)
    np.testing.assert_allclose(drawn.numpy(), expected.numpy(), rtol=1e-5)


def test_the_data_share_comes_from_the_weighted_system():
    tau = 0.3
    weights = VARIANCE.weights(torch.tensor([[[-1.0, 0.0, 0.5, 1.0]]]))
    share = data_share(Denoising(), (1, 1, 4), (1, 1, 4), VARIANCE.floor_sd, tau, probes=1, weights=weights)
    lam = VARIANCE.floor / tau**2
    np.testing.assert_allclose(share.numpy(), (weights / (weights + lam)).numpy(), rtol=1e-5)


def test_the_conflict_deficit_is_a_weighted_sum():
    from napari_treg.solver.conflict import ConflictCheck

    class Prior:  # only the device matters to the check's measurement
        device = torch.device("cpu")

    y = torch.zeros((1, 1, 2, 2))
    check = ConflictCheck(Prior(), Denoising(), y, noise=1.0, variance=VARIANCE)
    x = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]]]]).reshape(1, 1, 2, 2)
    var = VARIANCE.of(x).double()
    assert float(check.misfit(x, var)) == pytest.approx(float((x.double() ** 2 / (2 * var)).sum()))
    assert float(check.misfit(x)) == pytest.approx(float((x.double() ** 2).sum() / 2))
