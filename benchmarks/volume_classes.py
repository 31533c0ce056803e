"""Study: why each sample's volume solve kept 6 of 8 classes where the exact posterior is certain of all 8 (CPU).

The case of ``benchmarks/volume.py`` (8 planes of 16x16, disk / square alternating along z, a 3-D
Gaussian PSF sigma_xy 1 px and sigma_z 1 plane, noise 0.01; seed 7). Along z the PSF passes the
alternating pattern at 2.3 % of its amplitude, so the evidence for each plane's class lies in a weak
mode of ``A^T A`` and is decisive only summed over a plane's pixels. This script replaces the
sampler's data step by variants of it and reports, per variant, the share of samples whose class is
the truth's in each plane, the classes of the ensemble mean, and the calibration columns of
``benchmarks/volume.py``:

- ``default``: the data step as shipped, each sample alone (5 CG iterations around the denoiser's estimate,
  ``lam = noise^2 / prior_sd^2``);
- ``converged``: the same system solved to convergence (100 CG iterations);
- ``annealed``: ``lam_t = noise^2 / (prior_sd^2 + rho_t^2)`` with ``rho_t^2 = (1 - a_t) / a_t``
  (trust in the denoiser grows as the noise falls, as in DiffPIR), solved to convergence;
- ``oracle``: the denoiser's exact posterior covariance given ``z_t`` (within-class plus the
  between-class rank-one term of the mixture, known for the analytic prior) in place of
  ``lam I``: ``x = x0 + S A^T (A S A^T + noise^2 I)^-1 (y + e - A x0)`` (``e = 0``), solved to convergence;
- ``prior``: the same step with the prior's own covariance, ``S = s^2 I + sum_k pi_k (m_k - m)(m_k - m)^T``
  (the mixture's first two moments; the between-class term does not shrink as the denoiser commits
  to a class), solved to convergence: the most a linear data step can take from the prior;
- ``lookahead``: the shipped plane exchange (``napari_treg.solver.exchange``, the ensemble's default on a
  volume since it landed): at 40 %, 55 % and 59 % of the steps the samples, run as one batch, trade planes by the
  evidence of 5-step look-aheads to ``abar = 0.8`` (Gibbs over windows of 3 planes; docs/uncertainty.md). The
  other variants run with ``plane_exchange=False``, so that they measure the data step alone;
- ``kalman``: the ensemble's samples run as one batch and every data step uses their spread,
  ``S = prior_sd^2 I + X X^T / (N - 1)`` (``X``: the samples' deviations from their mean), with
  perturbed measurements (``e ~ N(0, noise^2 I)``), as an ensemble Kalman update; then the
  ensemble's own noise-aware last step (``solver.posterior.perturb_and_map``).

    python benchmarks/volume_classes.py                     # every variant, 8 samples
    python benchmarks/volume_classes.py --variants oracle --samples 16
    python benchmarks/volume_classes.py --variants lookahead --samples 16 --seed 8
"""

from __future__ import annotations

import argparse
import math
import time
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
from volume import LEVEL, NOISE, PLANES, case, exact_posterior, run_ensemble, scores

from napari_treg.operators import VolumeBlur
from napari_treg.solver import sampler
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.posterior import perturb_and_map, proximal_weight
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, schedule_settings

VARIANTS = ("default", "converged", "annealed", "oracle", "prior", "lookahead", "kalman")


@contextmanager
def data_step_variant(name: str, prior, iterations: int):
    """Run the sampler with the data step ``name`` (the noise level of each step is read from ``tweedie``)."""
    shipped_step, shipped_tweedie = sampler.data_step, sampler.tweedie
    step: dict = {}

    def tweedie(z, eps, a):
        step["a"], step["z"] = a, z
        return shipped_tweedie(z, eps, a)

    def data_step(operator, y, x0, config, variance):
        a = step["a"]
        if name == "converged":
            config = replace(config, cg_iterations=iterations)
        elif name == "annealed":
            lam = NOISE**2 / (prior.latent_std**2 + (1 - a) / a)
            config = replace(config, cg_iterations=iterations, cg_lambda=lam)
        elif name == "oracle":
            return oracle_step(operator, y, x0, prior, step["z"].float(), a, iterations)
        elif name == "prior":
            return covariance_step(operator, y, x0, prior_covariance(prior, tuple(x0.shape[-2:])), iterations)
        return shipped_step(operator, y, x0, config, variance)

    sampler.data_step, sampler.tweedie = data_step, tweedie
    try:
        yield
    finally:
        sampler.data_step, sampler.tweedie = shipped_step, shipped_tweedie


def covariance_step(operator, y, x0, cov, iterations):
    """``x0 + S A^T (A S A^T + noise^2 I)^-1 (y - A x0)`` for the covariance ``cov(u) = S u``, by CG."""

    def system(u):
        return operator.forward(cov(operator.adjoint(u))) + NOISE**2 * u

    rhs = y - operator.forward(x0)
    u, res = torch.zeros_like(rhs), rhs.clone()
    direction, rr = res.clone(), (res * res).sum()
    for _ in range(iterations):
        applied = system(direction)
        alpha = rr / (direction * applied).sum()
        u, res = u + alpha * direction, res - alpha * applied
        rr_new = (res * res).sum()
        direction, rr = res + rr_new / rr * direction, rr_new
    return x0 + cov(operator.adjoint(u))


def oracle_step(operator, y, x0, prior, z, a, iterations):
    """The data step with the exact covariance of ``x0 | z_t`` under the two-class mixture."""
    s2 = prior.latent_std**2
    v = a * s2 + 1 - a
    means = prior.means(tuple(z.shape[-2:])).to(z)
    log_p = torch.stack([-0.5 * (z - math.sqrt(a) * m).square().flatten(1).sum(1) / v for m in means], dim=1)
    r = torch.softmax(log_p, dim=1)
    between = (r[:, 0] * r[:, 1]).view(-1, 1, 1, 1)
    delta = (1 - a) * (means[1] - means[0]) / v
    within = s2 * (1 - a) / v

    def cov(u):
        return within * u + between * delta * (delta * u).flatten(1).sum(1).view(-1, 1, 1, 1)

    return covariance_step(operator, y, x0, cov, iterations)


def prior_covariance(prior, image_hw):
    """``u -> S u`` for the mixture's covariance ``S = s^2 I + sum_k pi_k d_k d_k^T``, ``d_k = m_k - m``
    (equal class weights), applied to each plane of a batch."""
    means = prior.means(image_hw).float()
    deviations = means - means.mean(dim=0)
    s2, weight = prior.latent_std**2, 1.0 / len(means)

    def cov(u):
        projections = torch.einsum("bchw,kchw->bk", u, deviations)
        return s2 * u + weight * torch.einsum("bk,kchw->bchw", projections, deviations)

    return cov


def batch_sample(prior, y: torch.Tensor, op, config: TRegSettings, seed: int) -> torch.Tensor:
    """The text-free TReg sampler on the ensemble's volumes as one batch; plane ``k`` with seed ``seed * 1000 + k``."""
    empty = prior.embed_text([""]).expand(len(y), -1, -1)
    generators = [torch.Generator().manual_seed(seed * 1000 + k) for k in range(len(y))]
    return sampler.treg_sample(
        prior, y, op, tuple(y.shape[-2:]), text=empty, null=empty, config=config, generators=generators
    )


def kalman_ensemble(c: dict, samples: int, steps: int, iterations: int, seed: int) -> dict:
    """The ensemble with ensemble-Kalman data steps (all samples in one sampler batch)."""
    prior, planes = c["prior"], len(c["labels"])
    tau = prior.latent_std
    op = VolumeBlur(c["op"].psf.numpy()).stacked(planes)
    y = c["y"].float().repeat(samples, 1, 1, 1)
    perturbations = torch.Generator().manual_seed(seed + 1000)

    def kalman_step(operator, y, x0, config, variance):
        deviations = x0.reshape(samples, -1) - x0.reshape(samples, -1).mean(0, keepdim=True)

        def cov(u):
            flat = u.reshape(samples, -1)
            spread = (deviations @ flat.T).T @ deviations / (samples - 1)
            return (tau**2 * flat + spread).reshape(u.shape)

        perturbed = y + NOISE * torch.randn(y.shape, generator=perturbations)
        return covariance_step(operator, perturbed, x0, cov, iterations)

    config = TRegSettings(
        steps=steps,
        guidance=0.0,
        adaptive_negation=False,
        **schedule_settings(DEFAULT_SCHEDULE) | {"final_dc": False},
        cg_lambda=proximal_weight(NOISE, tau),
    )
    shipped, sampler.data_step = sampler.data_step, kalman_step
    try:
        x = batch_sample(prior, y, op, config, seed)
    finally:
        sampler.data_step = shipped
    x = perturb_and_map(op, y, x, NOISE, tau, torch.randn(y.shape, generator=perturbations))
    xs = x.double().reshape(samples, planes, *x.shape[1:]).numpy()
    labels = np.array([prior.classify(torch.from_numpy(v).float()).tolist() for v in xs])
    low, high = np.quantile(xs, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
    return {"mean": xs.mean(0), "var": xs.var(0, ddof=1), "interval": (low, high), "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=100, help="CG iterations of the converged variants")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    c = case(("disk", "square"), args.seed)
    post = exact_posterior(c)
    run = argparse.Namespace(
        samples=args.samples, steps=args.steps, schedule="data-first", seed=args.seed, cg_iterations=None, dc_every=None
    )
    lines = [
        "| data step | share of samples with the true class, planes 0-7 | classes kept | 3-D residual "
        "| 90 % coverage | variance ratio | mean error (sd) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.variants:
        started = time.perf_counter()
        if name == "kalman":
            result = kalman_ensemble(c, args.samples, args.steps, args.iterations, args.seed)
        elif name == "lookahead":
            result, _ = run_ensemble(c, c["op"], run, plane_exchange=True)
        else:
            with data_step_variant(name, c["prior"], args.iterations):
                result, _ = run_ensemble(c, c["op"], run, plane_exchange=False)
        shares = np.mean(result["labels"] == np.array(c["labels"]), axis=0)
        r = scores(c, post, result["mean"], result["var"], result["interval"])
        lines.append(
            f"| {name} | {' '.join(f'{s:.2f}' for s in shares)} | {r['kept']}/{PLANES} | {r['residual']:.2f} "
            f"| {r['coverage']:.1%} | {r['var ratio']:.2f} | {r['mean err']:.2f} | {time.perf_counter() - started:.0f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
