"""The held-out check of an ensemble: hide some measured values, predict them, and correct the prior's spread.

An ensemble's spread is the posterior's only if the model's prior is the images' prior. A
measurement can test that itself: a first ensemble restores it without a random, seeded share
``fraction`` of its measured values (:class:`~napari_treg.operators.heldout.HeldOut`: ``A`` then a
mask), and predicts them: sample ``k`` predicts ``A x_k``, so a held-out value ``y_j`` should lie
in ``N(m_j, c^2 v_j (1 + 1/n) + sigma^2)`` with ``m_j``, ``v_j`` the mean and variance of the ``n``
predictions and ``sigma`` the noise. ``c = 1`` when the prior's spread is right.

The factor (empirical Bayes). Let the true prior spread be ``c tau`` instead of the model's
``tau``. Where a held-out value is seen by no other measured value (inpainting's pixels, SR's
low-resolution pixels under a pixel-independent prior), its predictive variance from the
prior scales exactly by ``c^2``; :func:`fit_factor` picks the ``c`` whose standardised residuals
``(y_j - m_j) / sqrt(c^2 v_j (1 + 1/n) + sigma^2)`` have mean square 1. Where the other values
see it too (blurs), ``v_j`` is mostly measured and ``c`` is poorly determined (docs/uncertainty.md).
The factor is applied only where the held-out values reject the model's spread: where both the
mean square at ``c = 1`` is more than :data:`SIGNIFICANCE` standard errors from 1 and the held-out
coverage is more than :data:`SIGNIFICANCE` binomial standard errors from :data:`LEVEL` (a hundred
values estimate a variance only to about 15 %, and a right model should not be made worse).

The correction acts on the prior's share only. The noise-aware last step is perturb-and-MAP
(:mod:`napari_treg.solver.posterior`): ``x_k = M (lam x_p,k + A^T (y + sigma e_k))`` with
``M = (A^T A + lam I)^-1``, ``lam = sigma^2 / tau^2`` and ``x_p,k`` the sampler's sample. Under the
prior ``c tau`` the prior draws scatter ``c`` times as far about their mean ``xbar_p``, so the
corrected draw is ``M' (lam' (xbar_p + c (x_p,k - xbar_p)) + A^T (y + sigma e_k))`` with
``lam' = sigma^2 / (c tau)^2``. This splits into a per-sample part, the noise-aware step with
``tau' = c tau`` on ``c x_p,k``, and one shift for all samples, ``(1 - c) M' lam' xbar_p``, added
once ``xbar_p`` is known (so the samples may be streamed). The data share is computed with
``tau'`` too. Measured values keep their measured spread (the data still dominate them), the
invented ones get ``c`` times the model's; for a Gaussian prior the result is exactly the
posterior under ``c tau``. The uncorrected samples come from the same sampler runs (no extra
model call): their std is kept as ``Ensemble.uncorrected_std``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from napari_treg.engine.restorer import Restorer, Run
from napari_treg.errors import InvalidInputError
from napari_treg.operators import LinearOperator
from napari_treg.operators.heldout import HeldOut
from napari_treg.solver.cg import data_consistency
from napari_treg.solver.posterior import cg_iterations, proximal_weight

#: the held-out values of a run with seed ``s`` are drawn by ``numpy.random.default_rng([s, HOLDOUT_STREAM])``
HOLDOUT_STREAM = 29
#: the fewest held-out values (pixels x channels x planes) a check needs
MIN_HELD_OUT = 32
#: the fewest samples of an ensemble with the check (its variances need a few)
MIN_SAMPLES = 4
#: the factor is searched in this range (outside it, the bound is reported)
FACTOR_RANGE = (0.05, 20.0)
#: the level of the held-out coverage
LEVEL = 0.9
#: the factor is applied when the mean square standardised residual at c = 1, and the held-out coverage, are this
#: many standard errors from 1 and from LEVEL
SIGNIFICANCE = 2.0
#: ``step(x, y, operator, seeds, prior_sd=...)``: the noise-aware last step of an ensemble's samples
Step = Callable[..., torch.Tensor]


def check_options(fraction: float, samples: int) -> None:
    """Refuse a held-out fraction outside (0, 0.5) and fewer than :data:`MIN_SAMPLES` samples."""
    if not 0.0 < fraction < 0.5:
        raise InvalidInputError(f"holdout must be between 0 and 0.5 (exclusive), got {fraction!r}")
    if samples < MIN_SAMPLES:
        raise InvalidInputError(
            f"the held-out check needs at least {MIN_SAMPLES} samples (their spread predicts the held-out values), "
            f"got {samples}"
        )


def hidden_map(run: Run, fraction: float) -> np.ndarray:
    """The held-out measurement pixels ``(h, w)``: a seeded random ``fraction`` of the measured ones.

    Raises InvalidInputError for a tiled run and when fewer than :data:`MIN_HELD_OUT` values would be held out.
    """
    if run.plan is not None:
        raise InvalidInputError(
            "the held-out check does not work with tiles yet: leave out tile_size (or make it larger than the image)"
        )
    hw = run.layout.hw
    measured = run.operator.measured(torch.ones((1, 1, *hw), dtype=torch.float64))[0, 0].numpy() != 0
    candidates = np.flatnonzero(measured)
    count = int(round(fraction * candidates.size))
    values = count * run.layout.channels * len(run.measured)
    if values < MIN_HELD_OUT or count >= candidates.size:
        raise InvalidInputError(
            f"holdout {fraction:g} of {candidates.size} measured pixels holds out {values} value(s); the check needs "
            f"at least {MIN_HELD_OUT}: use a larger holdout or image"
        )
    hidden = np.zeros(measured.size, bool)
    hidden[np.random.default_rng([run.options.seed, HOLDOUT_STREAM]).choice(candidates, count, replace=False)] = True
    return hidden.reshape(hw)


def fit_factor(residual: np.ndarray, variance: np.ndarray, noise: float) -> float:
    """The ``c`` in :data:`FACTOR_RANGE` with ``mean(residual^2 / (c^2 variance + noise^2)) = 1`` (bisection)."""
    r2, v, s2 = np.square(residual, dtype=np.float64), np.asarray(variance, np.float64), noise**2

    def excess(log_c: float) -> float:
        return float(np.mean(r2 / (math.exp(2 * log_c) * v + s2))) - 1.0

    low, high = (math.log(bound) for bound in FACTOR_RANGE)
    if excess(low) <= 0:
        return FACTOR_RANGE[0]
    if excess(high) >= 0:
        return FACTOR_RANGE[1]
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if excess(middle) > 0 else (low, middle)
    return math.exp((low + high) / 2)


def coverage(residual: np.ndarray, variance: np.ndarray, noise: float, factor: float, samples: int) -> float:
    """Share of held-out values within the ``LEVEL`` predictive interval ``t sqrt(c^2 variance + noise^2)``."""
    from scipy.stats import t

    half = float(t.ppf((1.0 + LEVEL) / 2.0, samples - 1)) * np.sqrt(factor**2 * variance + noise**2)
    return float(np.mean(np.abs(residual) <= half))


def rejects(residual: np.ndarray, variance: np.ndarray, noise: float, covered: float) -> bool:
    """Whether the held-out values reject the model's spread (``c = 1``): both their mean square standardised
    residual and their coverage ``covered`` are off by more than :data:`SIGNIFICANCE` standard errors."""
    z2 = np.square(residual) / (variance + noise**2)
    error = float(np.std(z2, ddof=1)) / math.sqrt(z2.size)
    coverage_error = math.sqrt(LEVEL * (1.0 - LEVEL) / z2.size)
    variance_off = abs(float(np.mean(z2)) - 1.0) > SIGNIFICANCE * error
    return variance_off and abs(covered - LEVEL) > SIGNIFICANCE * coverage_error


def verdict(before: float, factor: float, applied: bool) -> str:
    """The line the front ends show: how the held-out values were covered, and what was done."""
    line = f"held-out check: {before:.0%} of {LEVEL:.0%} covered; "
    if not applied:
        return line + f"consistent with the model's spread (fitted factor {factor:.2g}), not corrected"
    line += f"the spread of invented pixels was scaled by {factor:.2g}"
    if factor in FACTOR_RANGE:
        line += " (the bound of the search: the spread is far off)"
    return line


@dataclass
class HoldoutCheck:
    """One ensemble's check: its held-out map, the first pass's predictions, the fitted factor."""

    run: Run
    fraction: float
    noise: float
    prior_sd: float
    samples: int
    hidden: np.ndarray
    predictions: dict[int, np.ndarray] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    factor: float = 1.0

    @classmethod
    def plan(cls, run: Run, fraction: float, noise: float, prior_sd: float, samples: int) -> HoldoutCheck:
        return cls(run, fraction, noise, prior_sd, samples, hidden_map(run, fraction))

    def held_out_run(self) -> Run:
        """The run without the held-out values."""
        return replace(self.run, operator=HeldOut(self.run.operator, self.hidden))

    def predicting(self, restorer: Restorer, step: Step) -> Restorer:
        """A variant of an ensemble's restorer whose last step ``step`` (with the model's spread) also records
        each sample's prediction of the held-out values."""
        first_seed = self.run.options.seed
        full = self.run.operator.stacked(len(self.run.measured))  # the batch's volumes, each measured alone

        def record(x: torch.Tensor, y: torch.Tensor, operator: LinearOperator, seeds: list[int]) -> torch.Tensor:
            out = step(x, y, operator, seeds, prior_sd=self.prior_sd)
            predicted = full.forward(out.double()).numpy()[..., self.hidden]  # (B, C, held out)
            for seed, values in zip(seeds, predicted):
                self.predictions[seed - first_seed] = values
            return out

        return restorer.variant(restorer.config, record, restorer.exchange)

    def fit(self, seconds: float, model_calls: int) -> None:
        """Fit the factor on the recorded predictions; fills :attr:`summary`."""
        planes, n = len(self.run.measured), self.samples
        stack = np.stack([[self.predictions[k * planes + i] for i in range(planes)] for k in range(n)])
        observed = self.run.planes[..., self.hidden].astype(np.float64)  # (N, C, held out)
        residual = (observed - stack.mean(axis=0)).ravel()
        variance = (stack.var(axis=0, ddof=1) * (1.0 + 1.0 / n)).ravel()
        fitted = fit_factor(residual, variance, self.noise)
        before = coverage(residual, variance, self.noise, 1.0, n)
        applied = rejects(residual, variance, self.noise, before)
        self.factor = fitted if applied else 1.0
        self.summary = {
            "fraction": self.fraction,
            "values": int(residual.size),
            "coverage_before": before,
            "coverage_after": coverage(residual, variance, self.noise, self.factor, n),
            "level": LEVEL,
            "fitted_factor": fitted,
            "corrected": applied,
            "factor": self.factor,
            "prior_sd": self.factor * self.prior_sd,
            "seed_rule": f"held-out pixels: numpy.random.default_rng([seed, {HOLDOUT_STREAM}])",
            "correction": "prior spread tau -> factor * tau in the noise-aware step and the data share, "
            "the sampler's deviations scaled by factor (napari_treg.engine.holdout)",
            "model_calls": model_calls,
            "seconds": seconds,
            "verdict": verdict(before, fitted, applied),
        }

    def correction(self, restorer: Restorer, step: Step) -> Correction:
        """The corrected last step of one pass of the full ensemble."""
        return Correction(self, restorer, step)


class Correction:
    """One pass's corrected samples: the per-sample part in the finish hook, the shared shift after."""

    def __init__(self, check: HoldoutCheck, restorer: Restorer, step: Step):
        self.check = check
        self.step = step
        planes = len(check.run.measured)
        self.prior_sums: list[Any] = [0.0] * planes  # sum of the sampler's samples per plane (model units)
        self.plain: list[list[np.ndarray]] = [[] for _ in range(planes)]  # uncorrected sums and squares
        self.count = [0] * planes
        self.restorer = restorer.variant(restorer.config, self.finish, restorer.exchange)

    def finish(self, x: torch.Tensor, y: torch.Tensor, operator: LinearOperator, seeds: list[int]) -> torch.Tensor:
        check = self.check
        plain = self.step(x, y, operator, seeds, prior_sd=check.prior_sd).double().numpy()
        planes = len(self.prior_sums)
        for b in range(len(x)):
            i = (seeds[b] - check.run.options.seed) % planes
            self.prior_sums[i] = self.prior_sums[i] + x[b].double().numpy()
            self.count[i] += 1
            if not self.plain[i]:
                self.plain[i] = [np.zeros_like(plain[b]), np.zeros_like(plain[b])]
            self.plain[i][0] += plain[b]
            self.plain[i][1] += np.square(plain[b])
        return self.step(check.factor * x, y, operator, seeds, prior_sd=check.factor * check.prior_sd)

    def shift(self) -> np.ndarray:
        """``(1 - c) M' lam' xbar_p`` per plane ``(N, C, H, W)`` in the run's output units (a difference)."""
        check = self.check
        mean = torch.from_numpy(np.stack([s / n for s, n in zip(self.prior_sums, self.count)]))
        lam = proximal_weight(check.noise, check.factor * check.prior_sd)
        zeros = torch.zeros((len(mean), mean.shape[1], *check.run.layout.hw), dtype=torch.float64)
        solved = data_consistency(check.run.operator, zeros, mean, lam, cg_iterations(lam))
        return ((1.0 - check.factor) * solved).numpy() * output_per_model_unit(check.run)

    def uncorrected_std(self) -> np.ndarray:
        """The std of the uncorrected samples per plane ``(N, C, H, W)``, in output units."""
        n = np.asarray(self.count, np.float64).reshape(-1, 1, 1, 1)
        sums, squares = (np.stack([part[j] for part in self.plain]) for j in (0, 1))
        variance = np.clip((squares - sums**2 / n) / np.maximum(n - 1, 1), 0.0, None)
        return np.sqrt(variance) * output_per_model_unit(self.check.run)


def output_per_model_unit(run: Run) -> float:
    """How many output intensity units one model unit is (the intensity scale is affine)."""
    return (run.scale.high - run.scale.low) / 2.0
