"""Solver pieces: DDIM schedule, conjugate gradient, adaptive negation."""

import math

import numpy as np
import torch

from napari_treg.errors import DivergenceError
from napari_treg.models.base import NoiseSchedule
from napari_treg.operators import GaussianBlur, Inpainting, SuperResolution
from napari_treg.solver import AdaptiveNegation, conjugate_gradient, data_consistency, ddim_steps
from napari_treg.solver.divergence import DivergenceWatch
from napari_treg.solver.sampler import Step, renoise


def test_reference_schedule_has_57_dc_steps_every_third_below_170():
    steps = ddim_steps(NoiseSchedule.scaled_linear(), 200, 3, 0.85)
    dc = [s.index for s in steps if s.data_consistency]
    assert len(steps) == 200 and len(dc) == 57
    assert dc == list(range(0, 170, 3))
    assert steps[0].t == 996 and steps[-1].t == 1
    # timesteps go down by 5, and each step's a_prev is the next step's a
    assert all(a.a_prev == b.a for a, b in zip(steps, steps[1:]))
    assert math.isclose(steps[-1].a_prev, float(NoiseSchedule.scaled_linear().alphas_cumprod[0]))


def test_scaled_linear_schedule_matches_sd15_endpoints():
    abar = NoiseSchedule.scaled_linear().alphas_cumprod
    assert math.isclose(float(abar[0]), 1 - 0.00085, rel_tol=1e-12)
    betas_last = 1 - abar[-1] / abar[-2]
    assert math.isclose(float(betas_last), 0.012, rel_tol=1e-9)


def test_cg_matches_a_direct_solve_per_sample():
    op = SuperResolution(2)
    lam = 1e-2
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randn(2, 1, 4, 4, generator=gen, dtype=torch.float64)
    # dense A from the operator
    eye = torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)
    a = op.forward(eye).reshape(64, 16).T  # (16, 64)
    solved = data_consistency(op, y, x0, lam, iterations=64)
    for b in range(2):
        direct = torch.linalg.solve(
            a.T @ a + lam * torch.eye(64, dtype=torch.float64), a.T @ y[b].flatten() + lam * x0[b].flatten()
        )
        assert torch.allclose(solved[b].flatten(), direct, atol=1e-8)


def test_cg_five_iterations_reduce_the_objective():
    op = GaussianBlur(2.0)
    gen = torch.Generator().manual_seed(0)
    x_true = torch.rand(1, 3, 32, 32, generator=gen, dtype=torch.float64)
    y = op.forward(x_true)
    x0 = torch.zeros_like(x_true)
    lam = 1e-4

    def objective(x):
        return float(((op.forward(x) - y) ** 2).sum() + lam * ((x - x0) ** 2).sum())

    x5 = data_consistency(op, y, x0, lam, 5)
    assert objective(x5) < 0.05 * objective(x0)


def test_cg_solves_inpainting_in_one_iteration_and_leaves_a_converged_sample_alone():
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    op = Inpainting(mask)
    x0 = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    y = op.forward(torch.ones(2, 1, 8, 8, dtype=torch.float64))
    y[1] = 0  # sample 1: x0 already optimal, residual exactly zero
    x = data_consistency(op, y, x0, 1e-4, 5)
    keep = torch.from_numpy(~mask)
    assert torch.allclose(x[0, 0][keep], torch.full_like(x[0, 0][keep], 1 / (1 + 1e-4)))
    assert torch.all(x[0, 0][~keep] == 0) and torch.all(x[1] == 0)


def test_conjugate_gradient_on_a_spd_matrix():
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    spd = m @ m.T + 6 * torch.eye(6, dtype=torch.float64)
    rhs = torch.randn(1, 1, 1, 6, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: (spd @ v.reshape(6)).reshape(1, 1, 1, 6), rhs, torch.zeros_like(rhs), 6)
    assert torch.allclose(x.reshape(6), torch.linalg.solve(spd, rhs.reshape(6)), atol=1e-10)


def test_renoise_has_total_variance_one_minus_abar_prev():
    step = Step(0, 500, 0.3, 0.4, True)
    gen = torch.Generator().manual_seed(0)
    shape = (200000,)
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    n = torch.randn(shape, generator=gen, dtype=torch.float64)
    z = renoise(torch.zeros(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64), eps, step, n)
    assert abs(float(z.var()) - (1 - 0.4)) < 0.01
    # mean of the clean part: sqrt(a_prev) * (a_prev z0y + (1 - a_prev) z0)
    z = renoise(torch.ones(1), torch.zeros(1), torch.zeros(1), step, torch.zeros(1))
    assert math.isclose(float(z), math.sqrt(0.4) * 0.4, rel_tol=1e-6)


def test_adaptive_negation_lowers_similarity_and_stays_float32():
    gen = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(2, 16, generator=gen), dim=1)
    null = torch.randn(2, 77, 16, generator=gen).half()
    negation = AdaptiveNegation(null, lr=1e-3, steps=10)
    before = AdaptiveNegation.similarity(f, null.float())
    u = negation.update(f)
    assert u.dtype == torch.float32 and torch.isfinite(u).all()
    assert torch.all(negation.last_similarity < before)
    # the loss is linear in u: Adam moves each element by about -lr * sign(f) per step
    assert torch.allclose(u - null.float(), -1e-2 * torch.sign(f)[:, None, :].expand_as(u), atol=2e-3)


def test_adaptive_negation_equals_a_fresh_torch_adam_per_dc_step():
    """As the authors run it: a new torch.optim.Adam on the float32 null embedding at every DC step.

    Fails for an Adam state kept across DC steps: there the later DC steps differ by ~1e-2.
    """
    gen = torch.Generator().manual_seed(1)
    null = torch.randn(2, 5, 8, generator=gen)
    negation = AdaptiveNegation(null, lr=8e-4, steps=10)
    reference = null.clone().requires_grad_(True)  # a float32 leaf, like the authors' null text
    for _ in range(3):  # three data-consistency steps with different image embeddings
        f = torch.nn.functional.normalize(torch.randn(2, 8, generator=gen), dim=1)
        u = negation.update(f)
        adam = torch.optim.Adam([reference], lr=8e-4)  # moments and step count from zero
        for _ in range(10):
            adam.zero_grad()
            AdaptiveNegation.similarity(f, reference).sum().backward()
            adam.step()
        # 10 float32 additions to values ~1 (torch) against one (closed form): a few ulp apart
        assert (u - reference.detach()).abs().max() < 1e-5


def _watch_run(values: list[float], every: int) -> str | None:
    """Feed one latent per step to a DivergenceWatch; the error message, or None."""
    watch = DivergenceWatch(torch.device("cpu"), total=len(values), every=every)
    try:
        for index, value in enumerate(values):
            watch.observe(torch.full((1, 4, 2, 2), value), index)
        watch.check()
    except DivergenceError as error:
        return str(error)
    return None


def test_divergence_watch_names_the_first_bad_step_even_when_it_reads_late():
    values = [0.0, 1.0, math.nan, 2.0, math.inf, 3.0, 4.0]
    assert "at step 3 of 7" in _watch_run(values, every=1)
    assert "at step 3 of 7" in _watch_run(values, every=5)  # read at step 5, names step 3
    assert "at step 3 of 7" in _watch_run(values, every=100)  # only the final check reads it


def test_divergence_watch_is_quiet_for_finite_runs_and_catches_the_last_step():
    assert _watch_run([0.0, 1e30, -1e30, 5.0], every=3) is None
    assert "at step 4 of 4" in _watch_run([0.0, 1.0, 2.0, -math.inf], every=3)
