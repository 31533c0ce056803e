"""What the claim tests share (``tests/test_*_claims.py``): the run, the measurement, the fault injectors
and an independent model of the method for a Gaussian prior.

Every claim is a statistical test with fixed seeds and a tolerance derived from its sample size
(``Z`` = 5 standard errors unless said otherwise). Where it is cheap, a second test breaks the
mathematics on purpose and shows the claim then fails.

:func:`method_moments` is an independent scalar model of the method (re-derived from
docs/method.md): for a single Gaussian prior and an operator with ``A^T A`` diagonal
(inpainting), every step of the method is affine per pixel, so the mean and variance of its
output over seeds are known exactly.

Not a test module (pytest collects ``test_*.py`` only); the tests import it as ``claims_helpers``:
pytest's default ("prepend") import mode puts ``tests/``, which has no ``__init__.py``, on ``sys.path``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_treg.solver import TRegSettings
from napari_treg.solver.sampler import treg_sample

NOISE = 0.01  # measurement noise (the paper's, on [-1, 1])
Z = 5.0  # tolerance in standard errors


def solve(prior, y, op, hw, prompts, config, null_prompt="", seed=0):
    """Run the sampler on a batch (one prompt per sample); torch's global seed fixes the noise."""
    torch.manual_seed(seed)
    text = prior.embed_text(prompts)
    null = prior.embed_text([null_prompt] * len(prompts))
    return treg_sample(prior, y, op, hw, text=text, null=null, config=config)


def measure(op, x, seed=0):
    """``y = A x + n`` with noise ``NOISE`` from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    ax = op(x)
    return ax + NOISE * torch.randn(ax.shape, generator=gen)


# -- fault injectors (monkeypatched into napari_treg.solver.sampler) -----------------------------


def flipped_guide(eps_u, eps_c, guidance):
    """Classifier-free guidance with the wrong sign (for ``sampler.guide``)."""
    return eps_u - guidance * (eps_c - eps_u)


def dc_returns_x0(op, y, x0, lam, it):
    """A data-consistency step that does not solve (for ``sampler.data_consistency``)."""
    return x0


# -- an independent model of the method for a Gaussian prior -------------------------------------


def method_grid(abar: np.ndarray, config: TRegSettings) -> list[tuple[float, float, bool]]:
    """``(abar_t, abar_prev, dc)`` per step: DDIM timesteps ``k * (T // steps) + 1``, noisiest first."""
    ratio = len(abar) // config.steps
    grid = []
    for i, k in enumerate(range(config.steps - 1, -1, -1)):
        t = k * ratio + 1
        a_prev = abar[t - ratio] if t >= ratio else abar[0]
        dc = config.dc_every > 0 and i % config.dc_every == 0 and i < config.dc_until * config.steps
        grid.append((float(abar[t]), float(a_prev), dc))
    return grid


def method_moments(prior, config, keep, b, m) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-pixel mean and variance of the method's output over seeds.

    Prior ``N(m, s^2 I)``; ``A^T A = diag(keep)``, ``b = A^T y``. Each step maps the
    state affinely, ``z' = alpha z + beta + kappa n``, so mean and variance propagate.
    """
    s2, lam = prior.latent_std**2, config.cg_lambda
    mean, var = np.zeros_like(m), np.ones_like(m)
    for a, a_prev, dc in method_grid(prior.schedule.alphas_cumprod.numpy(), config):
        c, q, v = math.sqrt(a), math.sqrt(1 - a), a * s2 + 1 - a
        e1, e0 = q / v, -q * c * m / v  # eps = e1 z + e0 (exact score of the Gaussian)
        t1, t0 = (1 - q * e1) / c, -q * e0 / c  # Tweedie z0 = t1 z + t0
        output = (t1 * mean + t0, t1**2 * var)
        if dc:  # x0y = (b + lam z0) / (keep + lam), then the TReg re-noising
            d1, d0 = lam * t1 / (keep + lam), (b + lam * t0) / (keep + lam)
            w = math.sqrt(a_prev)
            alpha = w * (a_prev * d1 + (1 - a_prev) * t1) + (1 - a_prev) * e1
            beta = w * (a_prev * d0 + (1 - a_prev) * t0) + (1 - a_prev) * e0
            fresh = a_prev * (1 - a_prev)
        else:
            alpha = math.sqrt(a_prev) * t1 + math.sqrt(1 - a_prev) * e1
            beta = math.sqrt(a_prev) * t0 + math.sqrt(1 - a_prev) * e0
            fresh = 0.0
        mean, var = alpha * mean + beta, alpha**2 * var + fresh
    return output
