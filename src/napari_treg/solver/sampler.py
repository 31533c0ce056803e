"""The TReg sampler: DDIM with classifier-free guidance, data consistency and adaptive negation.

Reads like the method (shared/treg-method.md). It talks to the prior only
through :class:`~napari_treg.models.base.DiffusionPrior`, so Stable Diffusion,
the tiny test model and the analytic prior run this very code.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..models.base import DiffusionPrior
from ..operators import LinearOperator
from .cg import data_consistency
from .config import TRegConfig
from .divergence import DivergenceWatch
from .negation import AdaptiveNegation
from .schedule import Step, ddim_steps

Callback = Callable[[dict], None]


@torch.no_grad()
def treg_sample(
    prior: DiffusionPrior,
    y: torch.Tensor,
    operator: LinearOperator,
    image_hw: tuple[int, int],
    *,
    text: torch.Tensor,
    null: torch.Tensor,
    config: TRegConfig = TRegConfig(),
    generators: list[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Restore images ``(B, 3, H, W)`` in [-1, 1] from measurements ``y = A x + n``.

    ``text`` and ``null`` are the prompt and null/negative embeddings ``(B, T, D)``.
    ``generators`` (one per sample) make every sample's noise independent of the batch.
    ``callback`` receives ``{"i", "total", "z0", "step"}`` after every step; it may raise
    to stop the run (this is how cancelling works).
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
        eps = guided_noise(prior, z, step.t, text, null, config.guidance)
        z0 = (z - math.sqrt(1 - step.a) * eps) / math.sqrt(step.a)
        if step.data_consistency:
            x0y = data_consistency(operator, y, prior.decode(z0).float(), config.cg_lambda, config.cg_iterations)
            z0y = prior.encode(x0y).float()
            if config.adaptive_negation:
                null = negation.update(prior.embed_image(x0y))
            z = renoise(z0y, z0, eps, step, noise[step.index + 1])
        else:
            z = math.sqrt(step.a_prev) * z0 + math.sqrt(1 - step.a_prev) * eps
        watch.observe(z, step.index)
        if callback is not None:
            callback({"i": step.index, "total": len(steps), "z0": z0, "step": step})
    watch.check()
    x = prior.decode(z0).float()
    if config.final_dc:
        x = data_consistency(operator, y, x, config.cg_lambda, config.cg_iterations)
    return x


def guided_noise(
    prior: DiffusionPrior, z: torch.Tensor, t: int, text: torch.Tensor, null: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Classifier-free guidance ``eps_u + w (eps_c - eps_u)``; one batched model call."""
    if guidance == 0:
        return prior.predict_noise(z, t, null).float()
    eps_u, eps_c = prior.predict_noise(torch.cat([z, z]), t, torch.cat([null, text])).float().chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


def renoise(z0y: torch.Tensor, z0: torch.Tensor, eps: torch.Tensor, step: Step, n: torch.Tensor) -> torch.Tensor:
    """TReg's re-noising after data consistency; total noise variance ``1 - a_prev``."""
    a = step.a_prev
    z_bar = a * z0y + (1 - a) * z0
    return math.sqrt(a) * z_bar + (1 - a) * eps + math.sqrt(a * (1 - a)) * n


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
