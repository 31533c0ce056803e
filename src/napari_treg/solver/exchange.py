"""Plane exchange: the samples of a z-stack's ensemble trade planes by what the measurement says of them.

Why. Under a 3-D PSF the evidence for each plane's content is spread over its neighbours' measurement
and is decisive only summed over the whole plane; each sample's own data steps follow the first content
its denoiser commits to, and a plane that starts on the wrong side keeps it (benchmarks/volume_classes.py,
docs/validation.md). So at a few steps (:data:`EXCHANGE_AT` of the way) the samples of one group, run as
one batch, trade planes:

1. ``look_ahead``: every plane of every sample is carried ahead by :data:`LOOK_AHEAD_STEPS` deterministic
   DDIM steps without data to the step where ``abar`` is nearest :data:`LOOK_AHEAD_TO`; its estimate ``x_ik``
   there (sample ``i``, plane ``k``) has committed to its content, its detail still shrunk.
2. The evidence of a volume ``x`` built plane by plane from these candidates is
   ``log N(y; A x, sigma^2 I + r^2 A A^T)``, ``r^2 = s^2 (1 - a) / (a s^2 + 1 - a)`` at ``a = LOOK_AHEAD_TO``
   (the posterior variance of a pixel around its estimate there, ``s`` the prior's sd). Expanded, it is
   ``sum_k b[c_k, k] - 1/2 sum_{k, m} G[c_k, k, c_m, m]`` with ``b[i, k] = <x_ik, (A^T C^-1 y)_k>`` and
   ``G[i, k, j, m] = <x_ik, (A^T C^-1 A E_m x_jm)_k>``; by Woodbury, ``A^T C^-1 A u = (u - D(u)) / r^2`` and
   ``A^T C^-1 y = D_y / r^2``, where ``D`` and ``D_y`` are the data step's own solves
   (:func:`~napari_treg.solver.cg.data_consistency` with ``lam = sigma^2 / r^2``; no matrix is formed).
3. Each sample draws, by :data:`SWEEPS` Gibbs sweeps over windows of :data:`WINDOW` adjacent planes
   (starting from its own planes), a choice ``c_k`` among the group's candidates for every plane with
   probability proportional to the evidence. A plane taken from another sample restarts from that
   look-ahead estimate with fresh noise; its own planes keep their state.

Each trade costs :data:`LOOK_AHEAD_STEPS` model calls of the group and ``N * Z`` volume solves (``N``
samples, ``Z`` planes). Written here because no library samples across an ensemble's planes by the
evidence of a linear-Gaussian measurement; the method is the project's (docs/uncertainty.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from napari_treg.imaging import layout as imaging
from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import LinearOperator
from napari_treg.solver.cg import data_consistency
from napari_treg.solver.posterior import PROBE_VALUES, cg_iterations, proximal_weight
from napari_treg.solver.sampler import ddim_step, tweedie
from napari_treg.solver.timesteps import Step

#: fractions of the sampler's steps at which the samples trade planes (the last within the ensemble's data steps)
EXCHANGE_AT = (0.4, 0.55, 0.59)
#: the look-ahead carries each plane to the step whose abar is nearest this
LOOK_AHEAD_TO = 0.8
#: deterministic DDIM steps (model calls) of one look-ahead
LOOK_AHEAD_STEPS = 5
#: adjacent planes redrawn together by one Gibbs move
WINDOW = 3
#: Gibbs sweeps over the windows per sample and trade
SWEEPS = 2
#: the most samples that trade together (one sampler batch); more samples are split into balanced groups
MAX_GROUP = 16
#: a group's Gibbs draws and fresh noise come from ``numpy.random.default_rng([first seed, EXCHANGE_STREAM])``
EXCHANGE_STREAM = 23

#: ``predict(z, t)``: the sampler's guided noise prediction at timestep ``t``
Predict = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class PlaneExchange:
    """The exchange of an ensemble whose measurement has noise sd ``noise`` and whose prior has sd ``prior_sd``;
    ``check()`` is called in every CG iteration of the evidence's solves (a cancel raises from it)."""

    noise: float
    prior_sd: float
    check: Callable[[], None] | None = field(default=None, compare=False)

    def trade_steps(self, steps: int) -> frozenset[int]:
        """Indices of the sampler steps (of ``steps``) at which the samples trade."""
        return frozenset(index for index in (int(round(f * steps)) for f in EXCHANGE_AT) if index < steps)

    @property
    def look_ahead_variance(self) -> float:
        """``r^2``: a pixel's posterior variance around its estimate at ``abar = LOOK_AHEAD_TO``."""
        s2, a = self.prior_sd**2, LOOK_AHEAD_TO
        return s2 * (1 - a) / (a * s2 + 1 - a)

    def bind(
        self,
        prior: DiffusionPrior,
        operator: LinearOperator,
        y: torch.Tensor,
        depth: int,
        seed: int,
        steps: int,
    ) -> Trade:
        """The trade of one group: ``operator`` measures its stacked volumes of ``depth`` planes, ``y`` is one
        volume's measurement ``(depth, C, h, w)`` in the run's own channels (padded as the sampler's)."""
        rng = np.random.default_rng([seed, EXCHANGE_STREAM])
        return Trade(self, prior, operator, y, depth, self.trade_steps(steps), rng)

    def summary(self, groups: list[int]) -> dict:
        """``info["plane_exchange"]``: when and how the samples traded, and the groups' sizes."""
        return {
            "at": list(EXCHANGE_AT),
            "look_ahead_to": LOOK_AHEAD_TO,
            "look_ahead_steps": LOOK_AHEAD_STEPS,
            "window": WINDOW,
            "sweeps": SWEEPS,
            "groups": groups,
        }


@dataclass
class Trade:
    """One group's trades during one sampler run (:meth:`PlaneExchange.bind`); called by the sampler."""

    exchange: PlaneExchange
    prior: DiffusionPrior
    operator: LinearOperator
    y: torch.Tensor
    depth: int
    at: frozenset[int]
    rng: np.random.Generator
    moved: list[int] = field(default_factory=list)  # planes taken from another sample, per trade

    def __call__(
        self, step: Step, z_t: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor, predict: Predict
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z0, eps)`` of step ``step`` after the trade (unchanged at steps without one)."""
        samples = len(z0) // self.depth
        if step.index not in self.at or samples < 2:
            return z0, eps
        ahead = look_ahead(self.prior, predict, z_t, step.t, eps)
        candidates = self.candidates(ahead, samples)
        linear, gram = evidence_terms(self.operator, self.y, candidates, self.exchange)
        choice = np.stack([gibbs_choice(linear, gram, own, self.rng) for own in range(samples)])
        moved = choice != np.arange(samples)[:, None]  # (N, Z)
        self.moved.append(int(moved.sum()))
        source = torch.from_numpy(choice * self.depth + np.arange(self.depth)).reshape(-1).to(z0.device)
        mask = torch.from_numpy(moved.reshape(-1)).to(z0.device).view(-1, 1, 1, 1)
        fresh = torch.from_numpy(self.rng.standard_normal(tuple(eps.shape)).astype(np.float32)).to(eps)
        return torch.where(mask, ahead[source].to(z0), z0), torch.where(mask, fresh, eps)

    def candidates(self, ahead: torch.Tensor, samples: int) -> torch.Tensor:
        """The look-ahead latents decoded, in the measurement's channels: ``(N, Z, C, H, W)`` (evidence_dtype)."""
        x = imaging.from_rgb(self.prior.decode(ahead).to(evidence_dtype(ahead.device)), self.y.shape[1])
        return x.reshape(samples, self.depth, *x.shape[1:])


def look_ahead(prior: DiffusionPrior, predict: Predict, z: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
    """The clean-latent estimate after :data:`LOOK_AHEAD_STEPS` deterministic DDIM steps (no data) from ``z`` at
    timestep ``t`` (whose noise prediction ``eps`` the step has made) to the one whose abar is nearest
    :data:`LOOK_AHEAD_TO`; the step's own estimate when that one is not later."""
    alphas = np.asarray(prior.schedule.alphas_cumprod, dtype=np.float64)
    t_to = int(np.argmin(np.abs(alphas - LOOK_AHEAD_TO)))
    if t_to >= t:
        return tweedie(z, eps, alphas[t])
    times = np.linspace(t, t_to, LOOK_AHEAD_STEPS + 1).round().astype(int)
    for index, (now, later) in enumerate(zip(times[:-1], times[1:])):
        if index > 0:
            eps = predict(z, int(now))
        z = ddim_step(tweedie(z, eps, alphas[now]), eps, alphas[later])
    return tweedie(z, predict(z, int(t_to)), alphas[t_to])


def evidence_dtype(device: torch.device) -> torch.dtype:
    """float64 for the evidence's sums of many squares, except where the device has none (Apple's MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def evidence_terms(
    operator: LinearOperator, y: torch.Tensor, candidates: torch.Tensor, exchange: PlaneExchange
) -> tuple[np.ndarray, np.ndarray]:
    """``b (N, Z)`` and the symmetric ``G (N, Z, N, Z)`` of the evidence (module doc), from the data step's solves."""
    r2 = exchange.look_ahead_variance
    lam = proximal_weight(exchange.noise, math.sqrt(r2))
    iterations = cg_iterations(lam)
    n, depth = candidates.shape[:2]
    volume_op = operator.stacked(depth)
    y = y.to(candidates)
    check = exchange.check
    solved_y = data_consistency(volume_op, y, torch.zeros_like(candidates[0]), lam, iterations, check=check)
    linear = torch.einsum("nkchw,kchw->nk", candidates, solved_y) / r2
    flat = candidates.flatten(0, 1)  # (N * Z, C, H, W): candidate (j, m) at j * Z + m
    gram = torch.empty(n * depth, n * depth, dtype=candidates.dtype, device=candidates.device)  # (ik, jm)
    per_solve = max(1, PROBE_VALUES // candidates[0].numel())
    for first in range(0, n * depth, per_solve):
        index = torch.arange(first, min(first + per_solve, n * depth), device=flat.device)
        embedded = torch.zeros(len(index), depth, *flat.shape[1:], dtype=flat.dtype, device=flat.device)
        embedded[torch.arange(len(index)), index % depth] = flat[index]
        embedded = embedded.flatten(0, 1)
        smoothed = data_consistency(volume_op, torch.zeros_like(embedded), embedded, lam, iterations, check=check)
        applied = ((embedded - smoothed) / r2).reshape(len(index), depth, *flat.shape[1:])  # K E_m x_jm
        gram[:, index] = torch.einsum("nkchw,jkchw->nkj", candidates, applied).reshape(n * depth, len(index))
    gram = 0.5 * (gram + gram.T)
    return linear.cpu().numpy(), gram.reshape(n, depth, n, depth).cpu().numpy()


def gibbs_choice(linear: np.ndarray, gram: np.ndarray, own: int, rng: np.random.Generator) -> np.ndarray:
    """For the sample ``own``: which candidate each plane takes (``(Z,)``, indices into the ``N`` samples), by
    :data:`SWEEPS` Gibbs sweeps over windows of :data:`WINDOW` adjacent planes, from its own planes."""
    n, depth = linear.shape
    width = min(WINDOW, depth)
    choice = np.full(depth, own)
    everyone = np.arange(n)[:, None]
    for _ in range(SWEEPS):
        for first in rng.permutation(depth - width + 1):
            window = np.arange(first, first + width)
            outside = np.setdiff1d(np.arange(depth), window)
            log_w = window_log_weights(linear, gram, choice, window, outside, everyone)
            p = np.exp(log_w.ravel() - log_w.max())
            picked = np.unravel_index(rng.choice(p.size, p=p / p.sum()), log_w.shape)
            choice[window] = picked
    return choice


def window_log_weights(
    linear: np.ndarray,
    gram: np.ndarray,
    choice: np.ndarray,
    window: np.ndarray,
    outside: np.ndarray,
    everyone: np.ndarray,
) -> np.ndarray:
    """The log evidence (up to a constant) of every choice of candidates ``(N,) * width`` for the planes of
    ``window``, the other planes (``outside``) keeping ``choice``; ``everyone``: the sample indices as a column."""
    n, width = len(linear), len(window)
    unary = linear[:, window] - 0.5 * gram[everyone, window, everyone, window]  # (N, width)
    if len(outside):
        unary = unary - gram[:, window][:, :, choice[outside], outside].sum(axis=-1)
    log_w = np.zeros((n,) * width)
    for p in range(width):
        axes = [1] * width
        axes[p] = n
        log_w = log_w + unary[:, p].reshape(axes)
        for q in range(p + 1, width):
            pair = [1] * width
            pair[p] = pair[q] = n
            log_w = log_w - gram[:, window[p], :, window[q]].reshape(pair)  # the (p, q) and (q, p) terms
    return log_w
