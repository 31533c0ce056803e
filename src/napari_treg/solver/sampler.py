"""The TReg sampler: DDIM with classifier-free guidance, data consistency and adaptive negation.

Reads like the method (docs/method.md). It talks to the prior only
through :class:`~napari_treg.models.base.DiffusionPrior`, so Stable Diffusion,
the tiny test model and the analytic prior run this very code.

Notation (variable -> symbol of the method notes, docs/method.md, and the paper)::

    z, z_t        z_t       latent at DDIM step t (SD latent, scale 0.18215)
    step.a        abar_t    cumulative alpha of the noise schedule at t   (solver/timesteps.py)
    step.a_prev   abar_t'   the same at the next (less noisy) grid point t'
    text, null    c, u      prompt and null/negative text embeddings (u is optimised: negation)
    config.guidance  w      classifier-free guidance weight
    eps_free, eps_text  eps(z_t, u), eps(z_t, c)   the two noise predictions of one model call
    eps           eps       guided noise  eps(z_t, u) + w (eps(z_t, c) - eps(z_t, u))
    z0            z_0|t     Tweedie estimate of the clean latent
    y, operator   y, A      measurement y = A x + n and the forward operator
    x0y           x_0^y     data-consistent image: argmin ||y - A x||^2 + lambda ||x - D(z_0|t)||^2
    z0y           z_0^y     its latent E(x_0^y) (encoder mean)
    noise[k]      n         presampled N(0, I) noise of step k

What each step computes (the equation it implements):

1. ``guide``: classifier-free guidance, eps = eps(z_t, u) + w (eps(z_t, c) - eps(z_t, u))
   (Ho & Salimans, "Classifier-Free Diffusion Guidance").
2. ``tweedie``: z_0|t = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), the "predicted x_0" of
   DDIM (Song et al. 2021, arXiv 2010.02502, Eq. 12, first term).
3. plain step (eta 0): z_t' = sqrt(abar_t') z_0|t + sqrt(1 - abar_t') eps (DDIM Eq. 12 with
   sigma_t = 0).
4. data-consistency step (TReg; method notes "Sampler", DC steps 1-5): x_0^y by conjugate gradient
   on (A^T A + lambda I) x = A^T y + lambda D(z_0|t) (``solver/cg.py``); z_0^y = E(x_0^y);
   adaptive negation moves u away from the CLIP embedding of x_0^y (``solver/negation.py``);
   ``renoise``: zbar = abar_t' z_0^y + (1 - abar_t') z_0|t,
   z_t' = sqrt(abar_t') zbar + (1 - abar_t') eps + sqrt(abar_t' (1 - abar_t')) n
   (total noise variance 1 - abar_t'); or, with ``data_first``, ``renoise_data_first``:
   z_t' = sqrt(abar_t') z_0^y + sqrt(1 - abar_t') (sqrt(1 - eta) eps + sqrt(eta) n).
5. output: D(z_0|t) of the last step, then (``final_dc``) one more data-consistency solve.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import LinearOperator
from napari_treg.solver.cg import data_consistency
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.divergence import DivergenceWatch
from napari_treg.solver.negation import AdaptiveNegation
from napari_treg.solver.noise_weights import NoiseVariance
from napari_treg.solver.timesteps import Step, ddim_steps

Callback = Callable[[dict], None]
#: ``exchange(step, z_t, z0, eps, predict) -> (z0, eps)``: a hook that may replace the step's estimate and noise
#: (the ensemble's plane exchange, :mod:`napari_treg.solver.exchange`); ``predict(z, t)`` is the guided noise
Exchange = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@torch.no_grad()
def treg_sample(
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
    exchange: Exchange | None = None,
) -> torch.Tensor:
    """Restore images ``(B, 3, H, W)`` in [-1, 1] from measurements ``y = A x + n``.

    ``text`` and ``null`` are the prompt and null/negative embeddings ``(B, T, D)``.
    ``generators`` (one per sample) make every sample's noise independent of the batch.
    ``callback`` receives ``{"i", "total", "z0", "step"}`` after every step, and the step's noisy
    latent ``"z_t"`` with the text-free and prompted noise predictions ``"eps_free"``, ``"eps_text"``
    (None at guidance 0) of its one model call; it may raise to stop the run (this is how cancelling works).
    ``variance``: per-value noise (photon noise); every data step then weighs each measured value by
    ``1 / var(A x0)`` at its current estimate ``x0`` (None: one Gaussian level, ``W = I``).
    ``exchange``: called after every step's Tweedie estimate (:data:`Exchange`), e.g. the plane exchange.
    """
    steps = ddim_steps(prior.schedule, config.steps, config.dc_every, config.dc_until)
    batch = y.shape[0]
    noise = presampled_noise(prior, batch, image_hw, len(steps) + 1, generators)
    y = y.to(prior.device, torch.float32)
    text = text.to(prior.device, torch.float32)
    negation = AdaptiveNegation(null.to(prior.device), config.negation_lr, config.negation_steps)
    null = negation.null
    watch = DivergenceWatch(prior.device, len(steps))

    z = noise[0]
    for step in steps:
        z_t = z
        eps_free, eps_text = noise_predictions(prior, z_t, step.t, text, null, config.guidance)
        eps = guide(eps_free, eps_text, config.guidance)
        z0 = tweedie(z_t, eps, step.a)
        if exchange is not None:
            predict = functools.partial(guided_noise, prior, text=text, null=null, guidance=config.guidance)
            z0, eps = exchange(step, z_t, z0, eps, predict)
        if step.data_consistency:
            x0 = prior.decode(z0).float()
            x0y = data_step(operator, y, x0, config, variance)
            z0y = prior.encode(x0y).float()
            if config.adaptive_negation:
                null = negation.update(prior.embed_image(x0y))
            if config.data_first:
                z = renoise_data_first(z0y, eps, step, noise[step.index + 1], config.renoise_eta)
            else:
                z = renoise(z0y, z0, eps, step, noise[step.index + 1])
        else:
            z = ddim_step(z0, eps, step.a_prev)
        watch.observe(z, step.index)
        if callback is not None:
            state = {"i": step.index, "total": len(steps), "z0": z0, "step": step}
            callback(state | {"z_t": z_t, "eps_free": eps_free, "eps_text": eps_text})
    watch.check()
    x = prior.decode(z0).float()
    if config.final_dc:
        x = data_step(operator, y, x, config, variance)
    return x


def data_step(
    operator: LinearOperator, y: torch.Tensor, x0: torch.Tensor, config: TRegSettings, variance: NoiseVariance | None
) -> torch.Tensor:
    """x_0^y: the data-consistency solve around ``x0``; with per-value noise weighted by
    ``W = floor / var(A x0)`` (the variance at the current estimate, not at ``y``)."""
    if variance is None:
        return data_consistency(operator, y, x0, config.cg_lambda, config.cg_iterations)
    weights = variance.weights(operator.forward(x0))
    return data_consistency(operator, y, x0, config.cg_lambda, config.cg_iterations, weights)


def guided_noise(
    prior: DiffusionPrior, z: torch.Tensor, t: int, text: torch.Tensor, null: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Classifier-free guidance ``eps_u + w (eps_c - eps_u)``; one batched model call."""
    return guide(*noise_predictions(prior, z, t, text, null, guidance), guidance)


def noise_predictions(
    prior: DiffusionPrior, z: torch.Tensor, t: int, text: torch.Tensor, null: torch.Tensor, guidance: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The null-text and prompted noise predictions ``(eps_u, eps_c)`` in one batched model call
    (``eps_c`` is None at guidance 0, where the prompt is not used)."""
    if guidance == 0:
        return prior.predict_noise(z, t, null).float(), None
    eps_u, eps_c = prior.predict_noise(torch.cat([z, z]), t, torch.cat([null, text])).float().chunk(2)
    return eps_u, eps_c


def guide(eps_u: torch.Tensor, eps_c: torch.Tensor | None, guidance: float) -> torch.Tensor:
    """Classifier-free guidance ``eps_u + w (eps_c - eps_u)`` (``eps_u`` when there is no ``eps_c``)."""
    if eps_c is None:
        return eps_u
    return eps_u + guidance * (eps_c - eps_u)


def tweedie(z: torch.Tensor, eps: torch.Tensor, a: float) -> torch.Tensor:
    """The clean-latent estimate ``(z - sqrt(1 - a) eps) / sqrt(a)`` of a noise prediction."""
    return (z - math.sqrt(1 - a) * eps) / math.sqrt(a)


def ddim_step(z0: torch.Tensor, eps: torch.Tensor, a_next: float) -> torch.Tensor:
    """The deterministic DDIM step (eta 0) to ``a_next``: ``sqrt(a_next) z0 + sqrt(1 - a_next) eps``."""
    return math.sqrt(a_next) * z0 + math.sqrt(1 - a_next) * eps


def renoise(z0y: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor, step: Step, n: torch.Tensor) -> torch.Tensor:
    """TReg's re-noising after data consistency; total noise variance ``1 - a_prev``."""
    a = step.a_prev
    z_bar = a * z0y + (1 - a) * z0
    return math.sqrt(a) * z_bar + (1 - a) * eps + math.sqrt(a * (1 - a)) * n


def renoise_data_first(z0y: torch.Tensor, eps: torch.Tensor, step: Step, n: torch.Tensor, eta: float) -> torch.Tensor:
    """Data-first re-noising (DDS/ReSample-style): the data-consistent estimate at full weight,
    ``sqrt(a') z0y + sqrt(1 - a') (sqrt(1 - eta) eps + sqrt(eta) n)``; total noise variance ``1 - a'``."""
    a = step.a_prev
    return math.sqrt(a) * z0y + math.sqrt(1 - a) * (math.sqrt(1 - eta) * eps + math.sqrt(eta) * n)


def presampled_noise(
    prior: DiffusionPrior,
    batch: int,
    image_hw: tuple[int, int],
    count: int,
    generators: list[torch.Generator] | None,
) -> torch.Tensor:
    """All the Gaussian noise of a run ``(count, B, *latent)``, drawn up front on the CPU.

    One generator per sample: the same seed gives the same noise on any device
    and in any batch.
    """
    shape = (count, *prior.latent_shape(image_hw))
    if generators is None:
        generators = [None] * batch
    if len(generators) != batch:
        raise ValueError(f"{len(generators)} generators for a batch of {batch}")
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(noise, dim=1).to(prior.device)
