"""Calibration of napari_treg.ensemble against the exact posterior of the analytic prior (CPU).

The analytic prior with one class is Gaussian, ``x ~ N(m, s^2 I)`` (s = 0.2 model units), so for
``y = A x + n``, ``n ~ N(0, sigma^2 I)`` the posterior is exactly ``N(mu, C)`` with
``C = (I / s^2 + A^T A / sigma^2)^-1`` and ``mu = C (m / s^2 + A^T y / sigma^2)``; here ``A`` is
built densely (1024 x 1024 per channel at 32x32). With two classes the posterior is the mixture of
the per-class posteriors weighted by each class's evidence ``N(y; A m_k, sigma^2 I + s^2 A A^T)``.

For every case (one truth drawn from the prior, one measurement, ``--samples`` seeds) it prints

- variance ratio: mean over pixels of ensemble variance / exact posterior variance (target [0.75, 1.33]);
- coverage: share of pixels whose true value lies in ``Ensemble.interval(0.9)`` (target [85 %, 95 %]);
- mean error: RMS over pixels of (ensemble mean - posterior mean) / posterior sd (target <= 0.45);
- data share: mean and largest |data_share - exact| (exact ``1 - posterior var / prior var``; target
  <= 0.12), and, to compare, the mean error of the alternative ``1 - ensemble var / prior var`` (with
  the exact prior variance: its best case);

for the calibrated ensemble and, as the baseline, the plain loop over seeds (``restore`` on a stack
of copies: what an ensemble was before the noise-aware last step).

    python benchmarks/calibration.py                 # the default schedule's table
    python benchmarks/calibration.py --schedules data-first paper --write   # both, into docs/uncertainty.md
    python benchmarks/calibration.py --samples 16    # faster, rougher
    python benchmarks/calibration.py --photon --seeds 7 8 9 10 11 --last-step --write   # photon rows (docs/uncertainty.md)

Photon rows (``--photon``): the one-class prior mapped to photons (model -1 -> BACKGROUND, 1 -> PEAK
photons), measured with the Poisson-Gaussian variance of a camera of gain 1, read sd 2, offset 0, in
its heteroscedastic Gaussian form, ``y = A x + sqrt(var(A x)) n`` (var clipped at the read-noise floor),
whose exact posterior is ``C = (I / s^2 + A^T diag(1 / var) A)^-1``. (Poisson counts themselves are
not drawn here: the prior's spread, 40 photons, puts half the background below zero photons.) Rows for the dark and the bright half of the pixels (split at the truth's median), for
the ensemble with the model given, with it estimated from the image, and, to compare, with one
Gaussian level given (the RMS of the true per-value sd). ``--seeds``: several truths and measurements,
each figure as mean ± sd (range) over them. ``--last-step``: two checks of where the spread comes from
(:func:`last_step_rows`): the noise-aware last step alone on exact prior draws, and the sampler's samples
before it (their variance, and the ensemble variance their covariance predicts).

``--holdout 0.1`` instead measures the held-out check (napari_treg.engine.holdout) with a prior
whose spread is wrong: the truth is drawn with sigma 0.1 (one class, the disk), the model has
sigma 0.05 (too sure), 0.1 (right) or 0.2 (too unsure). For random 50 % inpainting, SR x2 (box)
and a half-image block hole it prints the 90 % coverage of the truth by ``interval(0.9)`` without
and with the check, the held-out coverage before and after, the factor and the check's cost
(targets: [85 %, 95 %] on random inpainting for every model; SR x2 too sure within 10 points of 90 %
and closer than without):

    python benchmarks/calibration.py --holdout 0.1 --samples 16 --write

``--steps-sweep 20 50 100 150 200`` instead runs the base cases (both priors, the three tasks) at
each number of steps and prints, per schedule and step count, the range of each number over the
cases and which cases miss a target; it gives the step count from which every case meets every
target (``napari_treg.engine.calibration.CALIBRATED_FROM_STEPS`` is that number):

    python benchmarks/calibration.py --steps-sweep 20 50 100 150 200 --seeds 7 8 9 --write
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_treg import restore
from napari_treg.api import ensemble
from napari_treg.engine.ensemble import sample_settings
from napari_treg.errors import InvalidInputError
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.noise import PoissonGaussian
from napari_treg.operators import Denoising, GaussianBlur, Inpainting, LinearOperator, SuperResolution
from napari_treg.solver.posterior import perturb_and_map
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config

NOISE = 0.05
SIZE = 32
LEVEL = 0.9
BLOCK = ("<!-- calibration:start -->", "<!-- calibration:end -->")
PHOTON_BLOCK = ("<!-- photon-calibration:start -->", "<!-- photon-calibration:end -->")
#: photons of the model's -1 and 1 in the photon rows, and the camera
BACKGROUND, PEAK = 2.0, 400.0
CAMERA = PoissonGaussian(gain=1.0, read_sd=2.0, offset=0.0)
TASKS = (("denoising", Denoising()), ("Gaussian blur 1", GaussianBlur(1.0)))
HOLDOUT_BLOCK = ("<!-- holdout:start -->", "<!-- holdout:end -->")
TRUE_SIGMA, MODEL_SIGMAS = 0.1, (0.05, 0.1, 0.2)
STEPS_BLOCK = ("<!-- calibration-steps:start -->", "<!-- calibration-steps:end -->")
#: the targets of every base row (docs/uncertainty.md): variance ratio, coverage, mean error, data share error
VAR_RATIO, COVERAGE, MEAN_ERROR, SHARE_ERROR = (0.75, 1.33), (0.85, 0.95), 0.45, 0.12
PRIORS = (("one class", ("disk",), True), ("two classes", ("disk", "square"), False))


def dense(op: LinearOperator, hw: tuple[int, int]) -> np.ndarray:
    """The operator as a matrix ``(measurements, pixels)`` for one channel."""
    pixels = hw[0] * hw[1]
    basis = torch.eye(pixels, dtype=torch.float64).reshape(pixels, 1, *hw)
    return op.forward(basis).reshape(pixels, -1).T.numpy()


def exact_posterior(prior: AnalyticPrior, op: LinearOperator, y: np.ndarray, with_text: bool) -> dict:
    """Posterior mean, variance and prior variance per value ``(3, H, W)``; two classes: the mixture."""
    hw = (SIZE, SIZE)
    a = dense(op, hw)
    s2 = prior.latent_std**2
    measured = op.measured(torch.ones((1, 1, *y.shape[-2:]), dtype=torch.float64)).numpy().ravel() != 0
    a = a[measured]
    precision = np.eye(a.shape[1]) / s2 + a.T @ a / NOISE**2
    cov = np.linalg.inv(precision)
    var = np.diag(cov)
    means = prior.means(hw).double().numpy().reshape(prior.num_classes, 3, -1)  # (K, 3, P)
    y_flat = y.reshape(3, -1)[:, measured]  # (3, M)
    evidence_cov = NOISE**2 * np.eye(a.shape[0]) + s2 * a @ a.T
    chol = np.linalg.cholesky(evidence_cov)
    post_means, log_w = [], []
    for k in range(prior.num_classes if not with_text else 1):
        post_means.append((cov @ (means[k].T / s2 + a.T @ y_flat.T / NOISE**2)).T)  # (3, P)
        r = np.linalg.solve(chol, (y_flat - means[k] @ a.T).T)
        log_w.append(-0.5 * float(np.sum(r**2)))
    w = np.exp(np.array(log_w) - max(log_w))
    w /= w.sum()
    mean = sum(wk * mk for wk, mk in zip(w, post_means))
    second = sum(wk * (mk**2 + var) for wk, mk in zip(w, post_means))
    k_used = 1 if with_text else prior.num_classes
    prior_mean = means[:k_used].mean(axis=0)
    prior_var = s2 + (means[:k_used] ** 2).mean(axis=0) - prior_mean**2
    shape = (3, *hw)
    return {
        "mean": mean.reshape(shape),
        "var": (second - mean**2).reshape(shape),
        "prior_var": prior_var.reshape(shape),
        "weights": w,
    }


def summary(mean, var, low, high, truth, post, share, pixels) -> dict[str, float]:
    """The four numbers of one row over the selected ``pixels`` (boolean ``(3, H, W)``)."""
    sd = np.sqrt(post["var"])
    row = {
        "var ratio": float((var / post["var"])[pixels].mean()),
        "coverage": float(((truth >= low) & (truth <= high))[pixels].mean()),
        "mean err": float(np.sqrt((((mean - post["mean"]) / sd) ** 2)[pixels].mean())),
    }
    exact_share = 1 - post["var"] / post["prior_var"]
    if share is not None:
        error = np.abs(share - exact_share)[pixels]
        row["share err"], row["share max"] = float(error.mean()), float(error.max())
    # the alternative: the ensemble's own variance against the exact prior variance (its best case)
    row["ensemble share err"] = float(np.abs(np.clip(1 - var / post["prior_var"], 0, 1) - exact_share)[pixels].mean())
    return row


def cases(size: int) -> dict[str, tuple[LinearOperator, dict[str, np.ndarray] | None]]:
    missing = np.zeros((size, size), bool)
    missing[:, : size // 2] = True
    parts = {"observed": ~missing, "missing": missing}
    return {
        "inpainting": (Inpainting(missing), parts),
        "SR x4": (SuperResolution(4), None),
        "Gaussian blur 1.5": (GaussianBlur(1.5), None),
    }


def run_case(prior, op, parts, args, with_text: bool, seed: int) -> list[tuple[str, dict, dict]]:
    hw = (SIZE, SIZE)
    truth, _ = prior.sample(1, 0, hw, torch.Generator().manual_seed(seed))
    ax = op.forward(truth.double())
    y = (ax + NOISE * torch.randn(ax.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64))[0]
    post = exact_posterior(prior, op, y.numpy(), with_text)
    image = np.moveaxis(y.numpy().astype(np.float32), 0, -1)  # (h, w, 3): model units, range (-1, 1)
    common = dict(
        model=prior,
        prompt="a disk" if with_text else "",
        steps=args.steps,
        batch_size=args.samples,
        intensity_range=(-1.0, 1.0),
        schedule=args.schedule,
    )
    started = time.perf_counter()
    ens = ensemble(image, op, samples=args.samples, noise=NOISE, **common)
    seconds = time.perf_counter() - started
    stack = np.repeat(image[None], args.samples, axis=0)
    plain = restore(stack, op, noise=NOISE, **common)  # plane k: seed k, no noise-aware last step
    truth_np = truth[0].numpy()
    to_chw = lambda a: np.moveaxis(a, -1, -3)  # noqa: E731
    low, high = (to_chw(b) for b in ens.interval(LEVEL))
    mean, var, share = to_chw(ens.mean), to_chw(ens.std) ** 2, to_chw(ens.data_share)
    pm, pv = to_chw(plain.mean(axis=0)), to_chw(plain.var(axis=0, ddof=1))
    half = (high - low) / 2 / np.maximum(to_chw(ens.std), 1e-12)  # the same t factor for the baseline
    plain_sd = np.sqrt(pv)
    rows = []
    for name, mask in (parts or {"all": np.ones(hw, bool)}).items():
        pixels = np.broadcast_to(mask, (3, *hw))
        ours = summary(mean, var, low, high, truth_np, post, share, pixels)
        base = summary(pm, pv, pm - half * plain_sd, pm + half * plain_sd, truth_np, post, None, pixels)
        rows.append((name, ours, base))
    print(f"  ({seconds:.1f} s, {ens.info['seconds_per_sample']:.3f} s/sample, {ens.info['model_calls']} model calls)")
    return rows


def table(args: argparse.Namespace) -> list[str]:
    header = (
        "| schedule | prior | task / pixels | variance ratio | 90 % coverage | mean error (sd) "
        "| data share error mean / max | data share from the ensemble variance: mean error "
        "| baseline (loop over seeds): variance ratio, coverage, mean error |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for schedule in args.schedules:
        args.schedule = schedule
        for prior_name, classes, with_text in PRIORS:
            prior = AnalyticPrior(classes=classes)
            for task, (op, parts) in cases(SIZE).items():
                print(f"{schedule}, {prior_name}, {task}")
                for name, ours, base in run_case(prior, op, parts, args, with_text, args.seed):
                    label = task if name == "all" else f"{task}, {name}"
                    lines.append(
                        f"| {schedule} | {prior_name} | {label} | {ours['var ratio']:.2f} | {ours['coverage']:.1%} "
                        f"| {ours['mean err']:.2f} | {ours['share err']:.3f} / {ours['share max']:.2f} "
                        f"| {ours['ensemble share err']:.3f} "
                        f"| {base['var ratio']:.2f}, {base['coverage']:.1%}, {base['mean err']:.2f} |"
                    )
    return lines


def missed_targets(row: dict[str, float]) -> list[str]:
    """The targets one row misses (empty: it meets them all)."""
    missed = []
    if not VAR_RATIO[0] <= row["var ratio"] <= VAR_RATIO[1]:
        missed.append(f"variance ratio {row['var ratio']:.2f}")
    if not COVERAGE[0] <= row["coverage"] <= COVERAGE[1]:
        missed.append(f"coverage {row['coverage']:.1%}")
    if row["mean err"] > MEAN_ERROR:
        missed.append(f"mean error {row['mean err']:.2f}")
    if row["share err"] > SHARE_ERROR:
        missed.append(f"data share error {row['share err']:.3f}")
    return missed


def steps_rows(args: argparse.Namespace) -> list[tuple[str, dict[str, float]]]:
    """``(case label, row)`` of every base case at ``args.steps`` for every seed in ``args.seeds``."""
    rows = []
    for seed in args.seeds:
        for prior_name, classes, with_text in PRIORS:
            prior = AnalyticPrior(classes=classes)
            for task, (op, parts) in cases(SIZE).items():
                for name, ours, _ in run_case(prior, op, parts, args, with_text, seed):
                    label = task if name == "all" else f"{task}, {name}"
                    rows.append((f"{prior_name}, {label}, seed {seed}", ours))
    return rows


def steps_table(args: argparse.Namespace) -> list[str]:
    """Per schedule and step count: the range of each number over the base cases and the cases that miss."""
    lines = [
        "| schedule | steps | variance ratio (min - max) | 90 % coverage (min - max) | mean error (max) "
        "| data share error (max) | cases meeting every target | missed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for schedule in args.schedules:
        args.schedule = schedule
        for steps in args.steps_sweep:
            args.steps = steps
            print(f"{schedule}, {steps} steps")
            rows = steps_rows(args)
            value = lambda key: [row[key] for _, row in rows]  # noqa: E731
            missed = [(label, missed_targets(row)) for label, row in rows]
            failing = [f"{label}: {', '.join(m)}" for label, m in missed if m]
            lines.append(
                f"| {schedule} | {steps} | {min(value('var ratio')):.2f} - {max(value('var ratio')):.2f} "
                f"| {min(value('coverage')):.1%} - {max(value('coverage')):.1%} | {max(value('mean err')):.2f} "
                f"| {max(value('share err')):.3f} | {len(rows) - len(failing)} of {len(rows)} "
                f"| {'; '.join(failing) or '-'} |"
            )
            print(lines[-1])
    return lines


# -- photon noise ---------------------------------------------------------------------------------


def to_photons(model_values: np.ndarray) -> np.ndarray:
    return BACKGROUND + (np.asarray(model_values, np.float64) + 1.0) / 2.0 * (PEAK - BACKGROUND)


def to_model(photons: np.ndarray) -> np.ndarray:
    return (np.asarray(photons, np.float64) - BACKGROUND) * 2.0 / (PEAK - BACKGROUND) - 1.0


def photon_posterior(prior: AnalyticPrior, op: LinearOperator, y: np.ndarray, var: np.ndarray) -> dict:
    """The heteroscedastic Gaussian posterior per channel: ``var`` ``(3, h, w)`` per measured value (model units)."""
    a = dense(op, (SIZE, SIZE))
    s2 = prior.latent_std**2
    means = prior.means((SIZE, SIZE)).double().numpy().reshape(prior.num_classes, 3, -1)[0]
    post_mean, post_var = [], []
    for c in range(3):
        w = 1.0 / var[c].ravel()
        cov = np.linalg.inv(np.eye(a.shape[1]) / s2 + (a.T * w) @ a)
        post_mean.append(cov @ (means[c] / s2 + a.T @ (w * y[c].ravel())))
        post_var.append(np.diag(cov))
    shape = (3, SIZE, SIZE)
    return {
        "mean": np.reshape(post_mean, shape),
        "var": np.reshape(post_var, shape),
        "prior_var": np.full(shape, s2),
    }


def photon_case(
    prior: AnalyticPrior, op: LinearOperator, args: argparse.Namespace, seed: int
) -> list[tuple[str, str, dict | None, object]]:
    """``(noise given as, pixels, row, model used)`` for one operator and seed: the model given, estimated,
    one Gaussian level, and the two checks of the last step (:func:`last_step_rows`)."""
    hw = (SIZE, SIZE)
    truth, _ = prior.sample(1, 0, hw, torch.Generator().manual_seed(seed))
    ax = op.forward(truth.double())[0].numpy()
    variance = CAMERA.in_model_units(BACKGROUND, PEAK)
    var_true = variance.of(torch.from_numpy(ax)).numpy()
    noise = np.random.default_rng(seed + 1).standard_normal(ax.shape)
    measured = to_photons(ax + np.sqrt(var_true) * noise)  # photons (3, h, w)
    post = photon_posterior(prior, op, to_model(measured), var_true)
    image = np.moveaxis(measured.astype(np.float32), 0, -1)
    common = dict(
        model=prior,
        prompt="a disk",
        steps=args.steps,
        batch_size=args.samples,
        intensity_range=(BACKGROUND, PEAK),
        schedule=args.schedule,
    )
    truth_np = truth[0].numpy()
    dark = truth_np <= np.median(truth_np)
    halves = (("dark half", dark), ("bright half", ~dark))
    runs = {
        "model given": dict(noise_model=CAMERA),
        "model estimated": dict(noise_model="poisson-gaussian", offset=0.0),
        "one Gaussian level (RMS)": dict(noise=float(np.sqrt(var_true.mean()))),
    }
    rows = []
    for label, extra in runs.items():
        started = time.perf_counter()
        try:
            ens = ensemble(image, op, samples=args.samples, **common, **extra)
        except InvalidInputError as error:  # the estimate can fail on a small, textured image: say so
            print(f"  {label}: {error}")
            rows += [(label, part, None, str(error)) for part, _ in halves]
            continue
        to_chw = lambda a: np.moveaxis(a, -1, -3)  # noqa: E731
        low, high = (to_model(to_chw(b)) for b in ens.interval(LEVEL))
        mean, var = to_model(to_chw(ens.mean)), (to_chw(ens.std) * 2.0 / (PEAK - BACKGROUND)) ** 2
        share = to_chw(ens.data_share)
        used = ens.info["settings"].get("noise_model", {}).get("input_units")
        print(f"  {label}: {time.perf_counter() - started:.1f} s; model {used}")
        for part, pixels in halves:
            rows.append((label, part, summary(mean, var, low, high, truth_np, post, share, pixels), used))
    if args.last_step:
        rows += last_step_rows(prior, op, image, to_model(measured), var_true, post, common, halves, seed)
    return rows


def last_step_rows(prior, op, image, y, var_true, post, common, halves, seed) -> list:
    """Where the ensemble's spread comes from, with the model given:

    - the noise-aware last step alone (``perturb_and_map``) on exact prior draws ``m + s e``: exact
      when its weights and its ``sqrt(var)`` perturbation are right (variance ratio 1 up to the draws' spread);
    - the sampler's samples before that step (``restore`` with the ensemble's settings and no last
      step): their variance over the prior's ``s^2``, and the ensemble variance their covariance ``S``
      predicts, ``diag(C S C) / s^4 + diag(C - C^2 / s^2)`` (the last step's algebra, variance at the truth).
    """
    s = prior.latent_std
    variance = CAMERA.in_model_units(BACKGROUND, PEAK)
    count = int(common["batch_size"])
    means = prior.means((SIZE, SIZE)).double()[0]
    draws = torch.Generator().manual_seed(seed + 2)
    x_prior = (means + s * torch.randn((count, *means.shape), generator=draws, dtype=torch.float64)).float()
    e = torch.randn((count, *y.shape), generator=draws, dtype=torch.float64).float()
    y_batch = torch.from_numpy(y).float()[None].expand(count, -1, -1, -1)
    alone = perturb_and_map(op, y_batch, x_prior, variance.floor_sd, s, e, variance=variance).double().numpy()
    used = sample_settings(method_config(common["schedule"], {}), variance.floor_sd, s)  # the ensemble's samples'
    settings = {name: getattr(used, name) for name in ("final_dc", "dc_until", "cg_lambda")}
    stack = np.repeat(image[None], count, axis=0)
    before = restore(stack, op, noise_model=CAMERA, **common, **settings)  # (n, h, w, 3) photons
    x_p = to_model(np.moveaxis(before, -1, -3))
    predicted = predicted_variance(op, x_p, var_true, s)
    rows = [
        ("last step alone, exact prior draws", part, moments_row(alone, post, pixels), None) for part, pixels in halves
    ]
    for part, pixels in halves:
        row = {
            "var ratio": float((predicted / post["var"])[pixels].mean()),
            "x_p var": float((x_p.var(axis=0, ddof=1) / s**2)[pixels].mean()),
        }
        rows.append(("sampler's samples (before the last step)", part, row, None))
    return rows


def moments_row(draws: np.ndarray, post: dict, pixels: np.ndarray) -> dict[str, float]:
    """Variance ratio and mean error of draws ``(n, 3, H, W)`` against the exact posterior."""
    sd = np.sqrt(post["var"])
    return {
        "var ratio": float((draws.var(axis=0, ddof=1) / post["var"])[pixels].mean()),
        "mean err": float(np.sqrt((((draws.mean(axis=0) - post["mean"]) / sd) ** 2)[pixels].mean())),
    }


def predicted_variance(op: LinearOperator, x_p: np.ndarray, var: np.ndarray, s: float) -> np.ndarray:
    """Per value, the variance of the last step's draws around samples ``x_p`` ``(n, 3, H, W)``:
    ``diag(C S C) / s^4 + diag(C) - diag(C^2) / s^2`` with ``S`` their sample covariance (per channel)."""
    a = dense(op, (SIZE, SIZE))
    out = np.zeros(x_p.shape[1:])
    for c in range(x_p.shape[1]):
        cov = np.linalg.inv(np.eye(a.shape[1]) / s**2 + (a.T / var[c].ravel()) @ a)
        centred = x_p[:, c].reshape(len(x_p), -1)
        centred = centred - centred.mean(axis=0)
        spread = ((centred @ cov) ** 2).sum(axis=0) / (len(x_p) - 1) / s**4
        out[c] = (spread + np.diag(cov) - (cov**2).sum(axis=0) / s**2).reshape(SIZE, SIZE)
    return out


#: the photon table's figures: (column, key, format)
PHOTON_FIGURES = (
    ("variance ratio", "var ratio", "{:.2f}"),
    ("90 % coverage", "coverage", "{:.1%}"),
    ("mean error (sd)", "mean err", "{:.2f}"),
    ("data share error mean", "share err", "{:.3f}"),
)


def spread(values: list[float], form: str) -> str:
    """``mean`` of one seed, ``mean +- sd (min - max)`` of several (sample sd)."""
    if len(values) == 1:
        return form.format(values[0])
    low, high = form.format(min(values)), form.format(max(values))
    return f"{form.format(np.mean(values))} ± {form.format(np.std(values, ddof=1))} ({low} - {high})"


def model_range(models: list[dict]) -> str:
    """The noise models used over the seeds: each value, or its range where the seeds differ."""
    parts = []
    for key in models[0]:
        values = [float(model[key]) for model in models]
        low, high = min(values), max(values)
        parts.append(f"{key} {low:.3g}" if f"{low:.3g}" == f"{high:.3g}" else f"{key} {low:.3g} - {high:.3g}")
    return ", ".join(parts)


def photon_table(args: argparse.Namespace) -> list[str]:
    names = " | ".join(column for column, _, _ in PHOTON_FIGURES)
    header = f"| schedule | task | noise given as | pixels | {names} | model used (input units) / notes |"
    lines = [header, "|---|---|---|---|" + "---|" * len(PHOTON_FIGURES) + "---|"]
    prior = AnalyticPrior(classes=("disk",))
    for schedule in args.schedules:
        args.schedule = schedule
        for task, op in TASKS[: args.tasks]:
            collected: dict[tuple[str, str], list] = {}
            for seed in args.seeds:
                print(f"{schedule}, photons, {task}, seed {seed}")
                for label, part, row, used in photon_case(prior, op, args, seed):
                    collected.setdefault((label, part), []).append((row, used))
            for (label, part), results in collected.items():
                lines.append(f"| {schedule} | {task} | {label} | {part} | " + photon_cells(results) + " |")
            print("\n".join(lines[-len(collected) :]))
    return lines


def photon_cells(results: list[tuple[dict | None, object]]) -> str:
    """The figures of one row over the seeds, and the model used (or why none was)."""
    rows = [row for row, _ in results if row is not None]
    failed = [str(used) for row, used in results if row is None]
    cells = []
    for _, key, form in PHOTON_FIGURES:
        values = [row[key] for row in rows if key in row]
        cells.append(spread(values, form) if values else "-")
    notes = []
    if rows and "x_p var" in rows[0]:
        notes.append("their variance / prior's s^2: " + spread([row["x_p var"] for row in rows], "{:.2f}"))
    models = [used for row, used in results if row is not None and isinstance(used, dict)]
    if models:
        notes.append(model_range(models))
    if failed:
        notes.append(f"not estimated in {len(failed)} of {len(results)} seeds: {failed[0]}")
    return " | ".join(cells) + " | " + ("; ".join(notes) or "-")


def holdout_cases(size: int) -> dict[str, tuple[LinearOperator, dict[str, np.ndarray] | None]]:
    random = np.random.default_rng(3).random((size, size)) < 0.5
    block = np.zeros((size, size), bool)
    block[:, : size // 2] = True
    return {
        "random 50 % inpainting": (Inpainting(random), {"missing": random, "observed": ~random}),
        "SR x2 (box)": (SuperResolution(2, "box"), None),
        "half-image block hole": (Inpainting(block), {"missing": block, "observed": ~block}),
    }


def holdout_case(op, parts, model_sigma: float, args) -> list[str]:
    """Rows of one case: the truth's coverage without and with the check, and the check's own numbers."""
    hw = (SIZE, SIZE)
    truth, _ = AnalyticPrior(classes=("disk",), sigma=TRUE_SIGMA).sample(
        1, 0, hw, torch.Generator().manual_seed(args.seed)
    )
    ax = op.forward(truth.double())
    noise = torch.randn(ax.shape, generator=torch.Generator().manual_seed(args.seed + 1), dtype=torch.float64)
    image = np.moveaxis((ax + NOISE * noise)[0].numpy().astype(np.float32), 0, -1)
    common = dict(
        model=AnalyticPrior(classes=("disk",), sigma=model_sigma),
        prompt="a disk",
        steps=args.steps,
        batch_size=args.samples,
        intensity_range=(-1.0, 1.0),
        samples=args.samples,
        noise=NOISE,
    )
    started = time.perf_counter()
    plain = ensemble(image, op, **common)
    plain_seconds = time.perf_counter() - started
    checked = ensemble(image, op, holdout=args.holdout, **common)
    check = checked.info["holdout"]
    truth_np = np.moveaxis(truth[0].numpy(), 0, -1)
    rows = []
    for name, mask in (parts or {"all": np.ones(hw, bool)}).items():
        pixels = np.broadcast_to(mask[..., None], truth_np.shape)
        covered = [
            float(((truth_np >= lo) & (truth_np <= hi))[pixels].mean())
            for lo, hi in (e.interval(LEVEL) for e in (plain, checked))
        ]
        rows.append(
            f"| {name} | {model_sigma:g} | {covered[0]:.1%} | {covered[1]:.1%} "
            f"| {check['coverage_before']:.1%} -> {check['coverage_after']:.1%} "
            f"| {check['fitted_factor']:.2f}{'' if check['corrected'] else ' (not applied)'} "
            f"| {check['values']} | {check['model_calls']} calls, {check['seconds']:.1f} s (ensemble {plain_seconds:.1f} s) |"
        )
    return rows


def holdout_table(args: argparse.Namespace) -> list[str]:
    lines = [
        "| task | pixels | model sigma | coverage of the truth without the check | with the check "
        "| held-out coverage before -> after | fitted factor | held-out values | cost of the check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, (op, parts) in holdout_cases(SIZE).items():
        for model_sigma in MODEL_SIGMAS:
            print(f"{task}, model sigma {model_sigma}")
            lines += [f"| {task} " + row for row in holdout_case(op, parts, model_sigma, args)]
            print(lines[-1])
    return lines


def write(lines: list[str], command: str, block: tuple[str, str] = BLOCK) -> None:
    """Replace the table between the markers of docs/uncertainty.md."""
    path = Path(__file__).resolve().parent.parent / "docs" / "uncertainty.md"
    text = path.read_text()
    start, end = text.index(block[0]) + len(block[0]), text.index(block[1])
    body = "\n".join(["", f"`{command}` ({platform.machine()}, {time.strftime('%Y-%m-%d')}):", "", *lines, ""])
    path.write_text(text[:start] + body + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--schedules", nargs="+", default=[DEFAULT_SCHEDULE], help="named schedules to run (default: the default's)"
    )
    parser.add_argument("--seed", type=int, default=7, help="seed of the truth and the measurement noise")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="photon rows (mean ± sd over them) and --steps-sweep (every case of each): these seeds of truth and "
        "noise (default: --seed)",
    )
    parser.add_argument(
        "--last-step", action="store_true", help="photon rows: also the last step alone and the sampler's samples"
    )
    parser.add_argument("--write", action="store_true", help="put the table into docs/uncertainty.md")
    parser.add_argument("--photon", action="store_true", help="the photon-noise rows (Poisson-Gaussian) instead")
    parser.add_argument("--tasks", type=int, default=len(TASKS), help="photon rows: the first this many tasks")
    parser.add_argument("--holdout", type=float, help="measure the held-out check with this fraction instead")
    parser.add_argument("--steps-sweep", type=int, nargs="+", help="the base cases at each of these step counts")
    args = parser.parse_args()
    torch.set_num_threads(1)
    command = "python benchmarks/calibration.py " + shlex.join(sys.argv[1:])
    if args.photon:
        args.seeds = args.seeds or [args.seed]
        print(
            f"photons {BACKGROUND:g}-{PEAK:g}, {CAMERA}, {SIZE}x{SIZE} RGB, {args.samples} samples, {args.steps} steps"
        )
        lines = photon_table(args)
        print("\n".join(lines))
        if args.write:
            write(lines, command, PHOTON_BLOCK)
        return
    if args.steps_sweep:
        args.seeds = args.seeds or [args.seed]
        print(f"noise {NOISE}, {SIZE}x{SIZE} RGB, {args.samples} samples, steps {args.steps_sweep}")
        lines = steps_table(args)
        print("\n".join(lines))
        if args.write:
            write(lines, command, STEPS_BLOCK)
        return
    print(f"noise {NOISE}, {SIZE}x{SIZE} RGB, {args.samples} samples, {args.steps} steps")
    lines = table(args) if args.holdout is None else holdout_table(args)
    print("\n".join(lines))
    if args.write:
        block = BLOCK if args.holdout is None else HOLDOUT_BLOCK
        write(lines, command, block)


if __name__ == "__main__":
    main()
