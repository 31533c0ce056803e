"""Baselines to compare TReg with, all with the signature of :func:`~.sampler.treg_sample`.

- :func:`psld_sample`: PSLD (Rout et al. 2023), DDIM plus the gradient of the measurement
  error and of the "gluing" term through the decoder (autograd).
- :func:`tikhonov_restore`: classical, no learned prior: smoothness-regularised least
  squares by conjugate gradient.
- :func:`richardson_lucy_restore`: classical Richardson-Lucy for blurs (non-negative operators).

"TReg without text" and "TReg without adaptive negation" are configurations of TReg
(``guidance=0``, ``adaptive_negation=False``), not separate methods.
The classical methods ignore the prior, text and noise; they run ``config.steps`` iterations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_treg.errors import DivergenceError, InvalidInputError
from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import GaussianBlur, KernelBlur, LinearOperator, SuperResolution
from napari_treg.solver.cg import conjugate_gradient
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.noise_weights import NoiseVariance
from napari_treg.solver.sampler import Callback, ddim_step, guided_noise, presampled_noise, tweedie
from napari_treg.solver.timesteps import ddim_steps

#: PSLD step sizes of the measurement and gluing terms (the PSLD paper's SD settings)
PSLD_OMEGA = 1.0
PSLD_GAMMA = 0.1
#: weight of the squared-gradient (smoothness) penalty of the Tikhonov baseline, and a small ridge
TIKHONOV_SMOOTHNESS = 1e-2
TIKHONOV_RIDGE = 1e-4
CG_CHUNK = 20


class _State(dict):
    """Callback state whose latent ``"z0"`` is encoded only if someone reads it (previews)."""

    def __init__(self, prior: DiffusionPrior, x: torch.Tensor, **items):
        super().__init__(x0=x, **items)
        self._prior = prior

    def __missing__(self, key):
        if key != "z0":
            raise KeyError(key)
        with torch.no_grad():
            self["z0"] = self._prior.encode(self["x0"].to(self._prior.device)).float()
        return self["z0"]


# -- PSLD ---------------------------------------------------------------------------------------


def psld_sample(
    prior: DiffusionPrior,
    y: torch.Tensor,
    operator: LinearOperator,
    image_hw: tuple[int, int],
    *,
    text: torch.Tensor,
    null: torch.Tensor,
    config: TRegSettings = TRegSettings(),
    generators: list[torch.Generator] | None = None,
    callback: Callback | None = None,
    variance: NoiseVariance | None = None,
    omega: float = PSLD_OMEGA,
    gamma: float = PSLD_GAMMA,
) -> torch.Tensor:
    """PSLD on DDIM (eta 0), with TReg's classifier-free guidance (``config.guidance``).

    Each step takes the DDIM update and subtracts the gradient, with respect to ``z_t``, of
    ``omega ||y - A D(z0)|| + gamma ||z0 - E(A^T y + (I - A^T A) D(z0))||`` (per sample).
    The prior's ``predict_noise``, ``decode`` and ``encode`` must be differentiable.
    """
    refuse_photon_noise(variance, "psld")
    steps = ddim_steps(prior.schedule, config.steps, 0, 0.0)
    z = presampled_noise(prior, y.shape[0], image_hw, 1, generators)[0]
    y = y.to(prior.device, torch.float32)
    text, null = text.to(prior.device, torch.float32), null.to(prior.device, torch.float32)
    for step in steps:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            eps = guided_noise(prior, z, step.t, text, null, config.guidance)
            z0 = tweedie(z, eps, step.a)
            loss = psld_loss(prior, operator, y, z0, omega, gamma)
            (grad,) = torch.autograd.grad(loss.sum(), z)
        z_prev = ddim_step(z0, eps, step.a_prev)
        z = (z_prev - grad).detach()
        z0 = z0.detach()
        _check_finite(z, step.index, len(steps))
        if callback is not None:
            callback({"i": step.index, "total": len(steps), "z0": z0, "step": step})
    with torch.no_grad():
        return prior.decode(z0).float()


def psld_loss(
    prior: DiffusionPrior, operator: LinearOperator, y: torch.Tensor, z0: torch.Tensor, omega: float, gamma: float
) -> torch.Tensor:
    """Per-sample PSLD objective: measurement error plus the gluing term, ``(B,)``."""
    x0 = prior.decode(z0).float()
    measurement = (y - operator.forward(x0)).flatten(1).norm(dim=1)
    glued = operator.adjoint(y) + x0 - operator.normal(x0)
    gluing = (z0 - prior.encode(glued).float()).flatten(1).norm(dim=1)
    return omega * measurement + gamma * gluing


# -- classical baselines --------------------------------------------------------------------------


def _gradient_normal(x: torch.Tensor) -> torch.Tensor:
    """``D^T D x`` for forward differences ``D`` along H and W (Neumann boundary)."""
    dh = x[..., 1:, :] - x[..., :-1, :]
    dw = x[..., :, 1:] - x[..., :, :-1]
    return (F.pad(dh, (0, 0, 1, 0)) - F.pad(dh, (0, 0, 0, 1))) + (F.pad(dw, (1, 0)) - F.pad(dw, (0, 1)))


def tikhonov_restore(
    prior: DiffusionPrior,
    y: torch.Tensor,
    operator: LinearOperator,
    image_hw: tuple[int, int],
    *,
    text: torch.Tensor | None = None,
    null: torch.Tensor | None = None,
    config: TRegSettings = TRegSettings(),
    generators: list[torch.Generator] | None = None,
    callback: Callback | None = None,
    variance: NoiseVariance | None = None,
    smoothness: float = TIKHONOV_SMOOTHNESS,
) -> torch.Tensor:
    """``argmin ||A x - y||^2 + smoothness ||grad x||^2 + ridge ||x||^2`` by CG (``config.steps`` iterations)."""
    refuse_photon_noise(variance, "tikhonov")
    y = y.to(prior.device, torch.float32)
    rhs = operator.adjoint(y)
    x = torch.zeros((y.shape[0], y.shape[1], *image_hw), device=y.device)

    def normal(v: torch.Tensor) -> torch.Tensor:
        return operator.normal(v) + smoothness * _gradient_normal(v) + TIKHONOV_RIDGE * v

    # CG in chunks of CG_CHUNK iterations (restarted), so progress and cancelling work
    total = config.steps
    for first in range(0, total, CG_CHUNK):
        x = conjugate_gradient(normal, rhs, x, min(CG_CHUNK, total - first))
        if callback is not None:
            callback(_State(prior, x, i=min(first + CG_CHUNK, total) - 1, total=total, step=None))
    return x


def richardson_lucy_restore(
    prior: DiffusionPrior,
    y: torch.Tensor,
    operator: LinearOperator,
    image_hw: tuple[int, int],
    *,
    text: torch.Tensor | None = None,
    null: torch.Tensor | None = None,
    config: TRegSettings = TRegSettings(),
    generators: list[torch.Generator] | None = None,
    callback: Callback | None = None,
    variance: NoiseVariance | None = None,
) -> torch.Tensor:
    """Richardson-Lucy deconvolution, ``config.steps`` iterations, on intensities ``(x + 1) / 2``.

    Needs a non-negative operator: a blur, or super-resolution with the box or Gaussian filter.
    """
    refuse_photon_noise(variance, "richardson_lucy")
    if not is_non_negative(operator):
        raise InvalidInputError(
            f"Richardson-Lucy needs a blur (GaussianBlur, MotionBlur, KernelBlur) or SuperResolution "
            f"with filter='box' or 'gaussian'; got {operator!r}"
        )
    y = ((y.to(prior.device, torch.float32) + 1) / 2).clamp_min(1e-6)
    ones = torch.ones((1, y.shape[1], *image_hw), device=y.device)
    sensitivity = operator.adjoint(torch.ones_like(operator.forward(ones))).clamp_min(1e-12)
    u = torch.ones((y.shape[0], y.shape[1], *image_hw), device=y.device) * y.mean(dim=(2, 3), keepdim=True)
    total = config.steps
    for i in range(total):
        ratio = y / operator.forward(u).clamp_min(1e-6)
        u = u * operator.adjoint(ratio) / sensitivity
        if callback is not None:
            callback(_State(prior, 2 * u - 1, i=i, total=total, step=None))
    return 2 * u - 1


def is_non_negative(operator: LinearOperator) -> bool:
    """Whether the operator has non-negative weights (Richardson-Lucy's requirement)."""
    if isinstance(operator, (GaussianBlur, KernelBlur)):
        return True
    return isinstance(operator, SuperResolution) and operator.filter in ("box", "gaussian")


def _check_finite(z: torch.Tensor, index: int, total: int) -> None:
    if index % 10 == 9 or index == total - 1:
        if not bool(torch.isfinite(z).all()):
            raise DivergenceError(f"PSLD diverged (NaN or inf) at step {index + 1} of {total}: try smaller step sizes")


def refuse_photon_noise(variance: NoiseVariance | None, method: str) -> None:
    """The baselines weigh every value alike (the sampler signature's ``variance`` must be None)."""
    if variance is not None:
        raise InvalidInputError(f"{method} does not weigh values by their noise: use method 'treg' for photon noise")
