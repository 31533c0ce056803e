"""A noise-aware last data step (perturb-and-MAP) and the data share of each pixel.

The measurement is ``y = A x + n`` with ``n ~ N(0, sigma^2 I)``. Near a sample ``x_hat`` of the
sampler, take the prior to be Gaussian, ``x ~ N(x_hat, tau^2 I)`` (``tau``: the prior's standard
deviation per pixel). The posterior is then Gaussian with covariance and mean

    C = (I / tau^2 + A^T A / sigma^2)^-1,      mu = C (x_hat / tau^2 + A^T y / sigma^2).

Perturb-and-MAP draws from it exactly with one linear solve: with ``e ~ N(0, I)`` (in the
measurement's shape) solve

    x = argmin_x ||A x - (y + sigma e)||^2 / sigma^2 + ||x - x_p||^2 / tau^2
      = C (x_p / tau^2 + A^T (y + sigma e) / sigma^2),

for a prior draw ``x_p``. Its mean is ``mu`` and, when ``x_p`` scatters by ``tau^2 I``, its
covariance is ``C (I / tau^2 + A^T A / sigma^2) C = C``. Here ``x_p`` is the sampler's own
sample: in the directions the measurement does not see (``A^T A`` small) the solve keeps it, so
the prior's (non-Gaussian) spread there is the model's; in the directions it sees well the solve
replaces it by the measurement plus fresh noise of the right size, so measured pixels get the
posterior spread (about ``sigma``) instead of none (a plain projection) or the prior's (no data
step at the end). Multiplying by ``sigma^2`` gives the data-consistency system with the proximal
weight ``lam = sigma^2 / tau^2``:

    (A^T A + lam I) x = A^T (y + sigma e) + lam x_p,

solved by the batched conjugate gradient of :mod:`.cg`.

Data share. ``1 - C_ii / tau^2`` is the share of pixel ``i``'s prior variance the measurement
removes (1: measured, 0: not seen at all). ``C / tau^2 = lam (A^T A + lam I)^-1``, whose diagonal
is estimated without forming the matrix (Hutchinson): for Rademacher probes ``r`` (entries +-1),
``E[r * lam (A^T A + lam I)^-1 r] = diag``; each probe is one solve of the same system with
``y = 0``. For inpainting the operator is diagonal and one probe is exact.

Per-value noise (photon noise, :class:`~napari_treg.solver.noise_weights.NoiseVariance`):
``n_i ~ N(0, var_i)``, ``var_i`` taken at the sample's ``A x_hat`` and clipped at the floor. With
``W = floor / var`` (in (0, 1]) the same algebra, multiplied by ``floor`` instead of ``sigma^2``, gives

    (A^T W A + lam I) x = A^T W (y + sqrt(var) e) + lam x_p,      lam = floor / tau^2,

whose draws have covariance ``C = (I / tau^2 + A^T diag(1 / var) A)^-1`` exactly, and the data
share is ``1 - diag(lam (A^T W A + lam I)^-1)``. ``||W^(1/2) A|| <= 1``, so :func:`cg_iterations`
still bounds the solves. ``var`` is taken at a data-consistent estimate: first the same solve
without the perturbation (weights at ``A x_hat``), then ``var`` at its result. Taking it at the
sampler's sample itself, which still scatters by the prior's spread (40 photons in the calibration),
gave the dark pixels 0.84 of the exact variance and 83.6 % coverage; the refined variance 0.99 and
87.3 % (benchmarks/calibration.py --photon, denoising, docs/uncertainty.md).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from napari_treg.operators import LinearOperator
from napari_treg.solver.cg import data_consistency
from napari_treg.solver.noise_weights import NoiseVariance

#: bounds of the conjugate-gradient iterations of these solves (see :func:`cg_iterations`)
MIN_CG_ITERATIONS, MAX_CG_ITERATIONS = 10, 300
#: Rademacher probes of the data-share estimate (its error per pixel is below 1 / sqrt(4 probes))
DATA_SHARE_PROBES = 64
#: probes solved together (bounds the memory of the estimate)
PROBES_PER_SOLVE = 16
#: the most probe values (probes x image values) solved together: fewer probes at a time for large images
PROBE_VALUES = 2**21


def probes_per_solve(image_values: int) -> int:
    """Probes solved together for an image of ``image_values`` values: :data:`PROBES_PER_SOLVE`, or fewer
    so that at most :data:`PROBE_VALUES` values are solved at once (at least one probe)."""
    return max(1, min(PROBES_PER_SOLVE, PROBE_VALUES // max(1, image_values)))


def proximal_weight(noise: float, prior_sd: float) -> float:
    """``lam = sigma^2 / tau^2`` of the data step (noise and prior sd in the same units)."""
    return (noise / prior_sd) ** 2


def cg_iterations(lam: float) -> int:
    """Iterations that solve ``(A^T A + lam I) x = b`` to a relative error of about 1e-4.

    The project's operators have ``||A|| <= 1``, so the condition number is at most
    ``kappa = (1 + lam) / lam``, and CG's error falls by ``(sqrt(kappa) - 1) / (sqrt(kappa) + 1)``
    per iteration: about ``5 sqrt(kappa)`` iterations reach 1e-4.
    """
    kappa = (1.0 + lam) / lam
    return int(min(MAX_CG_ITERATIONS, max(MIN_CG_ITERATIONS, math.ceil(5.0 * math.sqrt(kappa)))))


def perturb_and_map(
    operator: LinearOperator,
    y: torch.Tensor,
    x_sample: torch.Tensor,
    noise: float,
    prior_sd: float,
    perturbation: torch.Tensor,
    iterations: int | None = None,
    variance: NoiseVariance | None = None,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """One posterior draw per sample: the data step against ``y + noise * perturbation`` around ``x_sample``.

    ``y`` ``(B, C, h, w)`` measurements, ``x_sample`` ``(B, C, H, W)`` the sampler's samples,
    ``perturbation`` standard normal noise shaped like ``y``; all in the same (model) units.
    ``variance``: per-value noise; each value is then perturbed by ``sqrt(var(A x_sample))`` and
    weighted by ``floor / var`` (``noise`` is not used). ``check()`` is called before every CG
    iteration (a cancel raises from it).
    """
    if variance is None:
        target = operator.measured(y + noise * perturbation)
        lam = proximal_weight(noise, prior_sd)
        return data_consistency(operator, target, x_sample, lam, iterations or cg_iterations(lam), check=check)
    lam = proximal_weight(variance.floor_sd, prior_sd)
    iterations = iterations or cg_iterations(lam)
    var = variance.of(operator.forward(x_sample))
    x_hat = data_consistency(operator, operator.measured(y), x_sample, lam, iterations, variance.floor / var, check)
    var = variance.of(operator.forward(x_hat))
    target = operator.measured(y + var.sqrt() * perturbation)
    return data_consistency(operator, target, x_sample, lam, iterations, variance.floor / var, check)


def data_share(
    operator: LinearOperator,
    measurement_shape: tuple[int, ...],
    image_shape: tuple[int, ...],
    noise: float,
    prior_sd: float,
    *,
    probes: int = DATA_SHARE_PROBES,
    generator: torch.Generator | None = None,
    iterations: int | None = None,
    device: torch.device | str = "cpu",
    weights: torch.Tensor | None = None,
    check: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Per pixel ``1 - C_ii / tau^2`` for one image ``image_shape`` ``(C, H, W)``, clipped to [0, 1].

    ``measurement_shape`` ``(C, h, w)`` is the shape of ``A x``. ``weights``: per-value data weights
    ``floor / var`` shaped like it (``noise`` is then the floor's sd), from the same weighted system.
    For an operator that couples planes both shapes are a whole volume's, ``(Z, C, H, W)``, and each
    probe is one solve of the volume. ``check()`` is called before every CG iteration of every probe
    solve (a cancel raises from it); ``progress(done, solves)`` after every solve.
    """
    lam = proximal_weight(noise, prior_sd)
    volume = operator.couples_planes
    total = torch.zeros(image_shape, device=device)
    per_solve = 1 if volume else probes_per_solve(math.prod(image_shape))
    for first in range(0, probes, per_solve):
        count = min(per_solve, probes - first)
        signs = torch.randint(0, 2, (count, *image_shape), generator=generator).to(device, torch.float32) * 2 - 1
        zeros = torch.zeros((count, *measurement_shape), device=device)
        weight = None if weights is None else weights.to(device, torch.float32).expand(count, *measurement_shape)
        if volume:
            signs, zeros = signs[0], zeros[0]  # one probe: the volume's planes are the batch
            weight = None if weight is None else weight[0]
        solved = data_consistency(
            operator, zeros, signs, lam, iterations or cg_iterations(lam), weight, check
        )  # lam (.)^-1 r
        total += signs * solved if volume else (signs * solved).sum(dim=0)
        if progress is not None:
            progress(first // per_solve + 1, math.ceil(probes / per_solve))
    return (1.0 - total / probes).clamp(0.0, 1.0)
