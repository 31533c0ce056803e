"""Study: why the volume solve keeps 6 of 8 classes where the exact posterior is certain of all 8 (CPU).

The case of ``benchmarks/volume.py`` (8 planes of 16x16, disk / square alternating along z, a 3-D
Gaussian PSF sigma_xy 1 px and sigma_z 1 plane, noise 0.01; seed 7). Along z the PSF passes the
alternating pattern at 2.3 % of its amplitude, so the evidence for each plane's class lies in a weak
mode of ``A^T A`` and is decisive only summed over a plane's pixels. This script replaces the
sampler's data step by variants of it and reports, per variant, the share of samples whose class is
the truth's in each plane, the classes of the ensemble mean, and the calibration columns of
``benchmarks/volume.py``:

- ``default``: the data step as shipped (5 CG iterations around the denoiser's estimate,
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
- ``lookahead``: the default data step, and at three steps (40 %, 55 % and 59 % of the way, the last
  within the ensemble's data steps) the samples, run as one batch, trade planes by their evidence: each
  plane of each sample is carried ahead to ``abar = 0.8`` by 5 deterministic DDIM steps without data (its
  look-ahead estimate ``x_k``, committed to a class but with its detail still shrunk), and every sample
  draws, by Gibbs moves over windows of 3 adjacent planes, a choice among the N samples' look-aheads for
  each plane with probability ``N(y; A x, noise^2 I + r^2 A A^T)``,
  ``r^2 = s^2 (1 - abar) / (abar s^2 + 1 - abar)`` (the posterior variance of a plane around its estimate
  at ``abar``, from the data step's own prior ``s``). A plane taken from another sample restarts from that
  look-ahead with fresh noise; its own planes keep their state. Then the ensemble's own noise-aware last
  step;
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

from napari_treg.engine.ensemble import sample_settings
from napari_treg.operators import VolumeBlur
from napari_treg.solver import sampler
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.posterior import perturb_and_map, proximal_weight
from napari_treg.solver.sampler import tweedie as clean_estimate  # bound before the lookahead row wraps it
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, schedule_settings
from napari_treg.solver.timesteps import ddim_steps

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


class Volumes(VolumeBlur):
    """``count`` volumes of ``planes`` planes one after another on the batch axis, each blurred alone."""

    def __init__(self, psf: np.ndarray, count: int, planes: int):
        super().__init__(psf)
        self.count, self.planes = count, planes

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(self.planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([super(Volumes, self).forward(v) for v in self.split(x)])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([super(Volumes, self).adjoint(v) for v in self.split(y)])

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))


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
    op = Volumes(c["op"].psf.numpy(), samples, planes)
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


class PlaneEvidence:
    """``log N(y; A x, noise^2 I + r^2 A A^T)`` of one volume ``x`` built plane by plane from candidates, with the
    dense ``A`` (one channel; the same for each), and Gibbs moves that redraw a window of adjacent planes."""

    def __init__(self, a: np.ndarray, y: np.ndarray, r2: float, window: int):
        self.window, self.plane = window, a.shape[1] // PLANES
        self.blocks = [a[:, k * self.plane : (k + 1) * self.plane] for k in range(PLANES)]
        from scipy.linalg import cho_factor, cho_solve

        factor = cho_factor(NOISE**2 * np.eye(a.shape[0]) + r2 * a @ a.T)
        self.w_blocks = [cho_solve(factor, b) for b in self.blocks]  # W A_k
        self.gram = {
            (k, j): self.w_blocks[k].T @ self.blocks[j]
            for k in range(PLANES)
            for j in range(PLANES)
            if abs(k - j) < window
        }
        self.y = np.stack([y[:, ch].ravel() for ch in range(y.shape[1])], axis=1)  # (Z * P, C)

    def draw(self, candidates: np.ndarray, start: int, rng: np.random.Generator, sweeps: int) -> list[int]:
        """For one sample: which candidate ``(N, Z, C, P)`` each plane takes, by ``sweeps`` Gibbs sweeps over the
        windows, starting from sample ``start``'s own planes."""
        count = len(candidates)
        choice = [start] * PLANES
        r = self.y - sum(b @ candidates[start, k].T for k, b in enumerate(self.blocks))
        for _ in range(sweeps):
            for first in rng.permutation(PLANES - self.window + 1):
                planes = range(first, first + self.window)
                steps = [(candidates[:, k] - candidates[choice[k], k]).reshape(count, -1) for k in planes]
                log_w = np.zeros((count,) * self.window)
                for i, k in enumerate(planes):
                    axes = [1] * self.window
                    axes[i] = count
                    log_w = log_w + (steps[i] @ (self.w_blocks[k].T @ r).T.ravel()).reshape(axes)
                    for j, m in enumerate(planes):
                        quad = steps[i].reshape(count, -1, self.plane) @ self.gram[(k, m)]
                        q = quad.reshape(count, -1) @ steps[j].T  # (N, N): window plane i x window plane j
                        if i == j:
                            log_w = log_w - 0.5 * np.diagonal(q).reshape(axes)
                        elif i < j:
                            pair = [1] * self.window
                            pair[i] = pair[j] = count
                            log_w = log_w - q.reshape(pair)  # the (i, j) and (j, i) terms together
                p = np.exp(log_w.ravel() - log_w.max())
                picked = np.unravel_index(rng.choice(p.size, p=p / p.sum()), log_w.shape)
                for i, k in enumerate(planes):
                    r = r - self.blocks[k] @ steps[i][picked[i]].reshape(-1, self.plane).T
                    choice[k] = int(picked[i])
        return choice


def look_ahead(prior, z: torch.Tensor, t: int, a_to: float, count: int) -> torch.Tensor:
    """The denoiser's estimate after ``count`` deterministic DDIM steps (no data) from ``z`` at step ``t`` to the
    step where ``abar`` is nearest ``a_to``."""
    alphas = prior.schedule.alphas_cumprod
    t_to = int(np.argmin(np.abs(np.asarray(alphas) - a_to)))
    empty = prior.embed_text([""]).expand(len(z), -1, -1)
    times = np.linspace(t, t_to, count + 1).round().astype(int)
    for now, later in zip(times[:-1], times[1:]):
        a_now, a_later = float(alphas[now]), float(alphas[later])
        eps = prior.predict_noise(z, int(now), empty).float()
        z = math.sqrt(a_later) * clean_estimate(z, eps, a_now) + math.sqrt(1 - a_later) * eps
    eps = prior.predict_noise(z, int(times[-1]), empty).float()
    return clean_estimate(z, eps, float(alphas[times[-1]]))


def lookahead_ensemble(
    c: dict,
    samples: int,
    steps: int,
    seed: int,
    at=(0.4, 0.55, 0.59),
    a_to: float = 0.8,
    window: int = 3,
    sweeps: int = 2,
) -> dict:
    """The ensemble whose samples trade planes by the evidence of their look-ahead estimates (see the module doc)."""
    prior, planes = c["prior"], len(c["labels"])
    tau = prior.latent_std
    op = Volumes(c["op"].psf.numpy(), samples, planes)
    y = c["y"].float().repeat(samples, 1, 1, 1)
    r2 = tau**2 * (1 - a_to) / (a_to * tau**2 + 1 - a_to)
    evidence = PlaneEvidence(c["dense"], c["y"].numpy(), r2, window)
    rng, fresh = np.random.default_rng(seed + 555), torch.Generator().manual_seed(seed + 2000)
    config = sample_settings(
        TRegSettings(steps=steps, guidance=0.0, adaptive_negation=False, **schedule_settings(DEFAULT_SCHEDULE)),
        NOISE,
        tau,
    )
    trade_at = {int(round(f * steps)) for f in at}
    counter = {"step": 0}
    shipped = sampler.tweedie
    times = ddim_steps(prior.schedule, config.steps, config.dc_every, config.dc_until)

    def tweedie(z, eps, a):
        z0 = shipped(z, eps, a)
        index = counter["step"]
        counter["step"] += 1
        if index not in trade_at:
            return z0
        ahead = look_ahead(prior, z.float(), times[index].t, a_to, 5)
        candidates = ahead.double().numpy().reshape(samples, planes, ahead.shape[1], -1)
        choice = np.array([evidence.draw(candidates, j, rng, sweeps) for j in range(samples)])
        source = torch.from_numpy((choice * planes + np.arange(planes)).reshape(-1))
        moved = torch.from_numpy(choice.reshape(-1) != np.repeat(np.arange(samples), planes)).view(-1, 1, 1, 1)
        eps.copy_(torch.where(moved, torch.randn(eps.shape, generator=fresh), eps))
        return torch.where(moved, ahead[source].to(z0), z0)

    sampler.tweedie = tweedie
    try:
        x = batch_sample(prior, y, op, config, seed)
    finally:
        sampler.tweedie = shipped
    x = perturb_and_map(op, y, x, NOISE, tau, torch.randn(y.shape, generator=fresh))
    return ensemble_result(prior, x, samples, planes)


def ensemble_result(prior, x: torch.Tensor, samples: int, planes: int) -> dict:
    """Mean, variance, the ensemble's predictive interval (``Ensemble.interval``) and the class of every plane."""
    from scipy.stats import t

    xs = x.double().reshape(samples, planes, *x.shape[1:]).numpy()
    labels = np.array([prior.classify(torch.from_numpy(v).float()).tolist() for v in xs])
    mean, var = xs.mean(0), xs.var(0, ddof=1)
    half = float(t.ppf((1 + LEVEL) / 2, samples - 1)) * math.sqrt(1 + 1 / samples) * np.sqrt(var)
    return {"mean": mean, "var": var, "interval": (mean - half, mean + half), "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=100, help="CG iterations of the converged variants")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--trade-at",
        type=float,
        nargs="*",
        default=[0.4, 0.55, 0.59],
        help="lookahead: fractions of the steps to trade at",
    )
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
            result = lookahead_ensemble(c, args.samples, args.steps, args.seed, at=args.trade_at)
        else:
            with data_step_variant(name, c["prior"], args.iterations):
                result, _ = run_ensemble(c, c["op"], run)
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
