"""A z-stack restored as one volume vs plane by plane, against the exact posterior of the analytic prior (CPU).

The case of issue 30: 8 planes of 16x16, disk / square alternating along z (each plane drawn from
its class, ``x = m_k + s e``, s = 0.2 model units), blurred by a 3-D Gaussian PSF (sigma_xy 1 px,
sigma_z 1 plane), noise sigma 0.01, a 16-sample ensemble of 100 steps at the default schedule.
Given the classes the posterior is Gaussian, ``C = (I / s^2 + A^T A / sigma^2)^-1`` and
``mu = C (m / s^2 + A^T y / sigma^2)`` with the dense 3-D ``A`` (2048 x 2048 per channel), so every
number below is checked against an exact answer:

- classes kept: planes whose class (nearest template) is the truth's;
- 3-D residual: RMS of ``A x - y`` in noise units, for ``x`` the ensemble mean;
- coverage: share of voxels whose true value lies in ``Ensemble.interval(0.9)``;
- variance ratio: mean of ensemble variance / exact posterior variance;
- mean error: RMS of (ensemble mean - mu) / posterior sd;
- error vs truth: RMS of (estimate - truth), model units.

Rows: the exact posterior mean, the volume solve (``VolumeBlur``), plane by plane with the PSF's
in-focus slice as a 2-D kernel (the best the tool offered before), the volume solve with a quadratic
z-coupling term in the data step (``--couplings``), and 3-D Richardson-Lucy (scikit-image).
Then the one-class calibration (all planes disks: the prior is exactly Gaussian). For two classes it
also prints, per plane, the exact class posterior ``P(true class | y)`` (a mixture over all 2^8 class
assignments), the log odds of flipping that plane's class alone, and what the prior's Gaussian
relaxation (its first two moments, the prior of any linear data step) knows:
``P(class on the truth's side | y)``.

    python benchmarks/volume.py                    # the table of docs/validation.md
    python benchmarks/volume.py --samples 8 --steps 50   # faster, rougher
    python benchmarks/volume.py --cg-iterations 20       # more CG iterations per data step
    python benchmarks/volume.py --dc-every 1             # a data step at every step
    python benchmarks/volume.py --evidence-only --seed 8 # only the exact class figures (seconds)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_treg.api import ensemble
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import KernelBlur, VolumeBlur
from napari_treg.solver.schedules import DEFAULT_SCHEDULE

PLANES, SIZE, NOISE, LEVEL = 8, 16, 0.01, 0.9


def gaussian_psf(sigma_z: float = 1.0, sigma_xy: float = 1.0, radius_z: int = 2, radius_xy: int = 3) -> np.ndarray:
    rz, rxy = np.arange(-radius_z, radius_z + 1), np.arange(-radius_xy, radius_xy + 1)
    gz, gxy = np.exp(-0.5 * (rz / sigma_z) ** 2), np.exp(-0.5 * (rxy / sigma_xy) ** 2)
    psf = gz[:, None, None] * gxy[None, :, None] * gxy[None, None, :]
    return psf / psf.sum()


class ZCoupled(VolumeBlur):
    """The volume blur whose data step also penalises z-differences: ``A^T A + mu D_z^T D_z``
    (a quadratic coupling along z inside the data step, as in DiffusionMBIR's TV-z, made smooth)."""

    def __init__(self, psf: np.ndarray, mu: float):
        super().__init__(psf)
        self.mu = mu

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        volumes = x.unflatten(0, (-1, self.system_planes(len(x))))  # each volume's z-differences alone
        dz = volumes[:, 1:] - volumes[:, :-1]
        dtd = torch.zeros_like(volumes)
        dtd[:, 1:] += dz
        dtd[:, :-1] -= dz
        return super().normal(x) + self.mu * dtd.flatten(0, 1)


def dense(op: VolumeBlur, shape: tuple[int, ...]) -> np.ndarray:
    """The operator as a matrix for one channel of a ``(Z, H, W)`` volume."""
    size = int(np.prod(shape))
    columns = [op.forward(e.reshape(shape[0], 1, *shape[1:])).reshape(-1) for e in torch.eye(size, dtype=torch.float64)]
    return torch.stack(columns, dim=1).numpy()


def case(classes: tuple[str, ...], seed: int) -> dict:
    prior = AnalyticPrior(classes=classes)
    means = prior.means((SIZE, SIZE)).double()
    labels = [k % len(classes) for k in range(PLANES)]
    m = torch.stack([means[k] for k in labels])  # (Z, 3, H, W)
    gen = torch.Generator().manual_seed(seed)
    truth = m + prior.latent_std * torch.randn(m.shape, generator=gen, dtype=torch.float64)
    op = VolumeBlur(gaussian_psf())
    y = op.forward(truth) + NOISE * torch.randn(m.shape, generator=gen, dtype=torch.float64)
    return {"prior": prior, "labels": labels, "m": m, "truth": truth, "op": op, "y": y}


def exact_posterior(c: dict) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean and variance given the classes, ``(Z, 3, H, W)`` each."""
    a = dense(c["op"], (PLANES, SIZE, SIZE))
    c["dense"] = a
    s2 = c["prior"].latent_std ** 2
    cov = np.linalg.inv(np.eye(a.shape[1]) / s2 + a.T @ a / NOISE**2)
    mean = np.empty(c["m"].shape)
    for ch in range(3):
        m, y = c["m"][:, ch].numpy().ravel(), c["y"][:, ch].numpy().ravel()
        mean[:, ch] = (cov @ (m / s2 + a.T @ y / NOISE**2)).reshape(PLANES, SIZE, SIZE)
    var = np.broadcast_to(np.diag(cov).reshape(PLANES, 1, SIZE, SIZE), mean.shape)
    return mean, var


def measurement_factor(c: dict, a: np.ndarray):
    """Cholesky factor of ``sigma^2 I + s^2 A A^T``, the covariance of ``y`` given a class assignment."""
    from scipy.linalg import cho_factor

    return cho_factor(NOISE**2 * np.eye(a.shape[0]) + c["prior"].latent_std ** 2 * a @ a.T)


def evidence(c: dict, a: np.ndarray, factor):
    """``labels -> log N(y; A m_labels, sigma^2 I + s^2 A A^T)`` (no constant): the evidence of a class assignment
    (``factor``: :func:`measurement_factor`)."""
    from scipy.linalg import cho_solve

    means = c["prior"].means((SIZE, SIZE)).double().numpy()  # (K, 3, H, W)
    y = c["y"].numpy()

    def log_evidence(labels) -> float:
        m = means[list(labels)]  # (Z, 3, H, W)
        r = np.stack([y[:, ch].ravel() - a @ m[:, ch].ravel() for ch in range(3)], axis=1)
        return -0.5 * float((r * cho_solve(factor, r)).sum())

    return log_evidence


def relaxed_class_side(c: dict, a: np.ndarray, factor) -> np.ndarray:
    """Per plane, the probability that the prior's Gaussian relaxation puts the class on the truth's side (two classes).

    The relaxation keeps the mixture's first two moments, ``x_k = m + (c_k - 1/2) d + s e`` with
    ``d = m_1 - m_0`` and a continuous class coordinate ``c_k ~ N(1/2, 1/4)``: the prior of any linear
    (Gaussian) data step. Its posterior over the 8 coordinates is Gaussian; the result is
    ``P(c_k > 1/2 | y)`` for a square plane, ``P(c_k < 1/2 | y)`` for a disk.
    """
    from scipy.linalg import cho_solve
    from scipy.stats import norm

    means = c["prior"].means((SIZE, SIZE)).double().numpy()
    middle, d = means.mean(axis=0), means[1] - means[0]
    precision, b = 4.0 * np.eye(PLANES), np.zeros(PLANES)
    for ch in range(3):
        planes = np.zeros((PLANES, PLANES, SIZE, SIZE))
        planes[np.arange(PLANES), np.arange(PLANES)] = d[ch]
        columns = np.stack([a @ p.ravel() for p in planes], axis=1)  # A d_k, one column per plane
        r = c["y"][:, ch].numpy().ravel() - a @ np.broadcast_to(middle[ch], (PLANES, SIZE, SIZE)).ravel()
        precision += columns.T @ cho_solve(factor, columns)
        b += columns.T @ cho_solve(factor, r)
    cov = np.linalg.inv(precision)
    offset = cov @ b  # posterior mean of c_k - 1/2
    signs = np.where(np.array(c["labels"]) == 1, 1.0, -1.0)
    return norm.cdf(signs * offset / np.sqrt(np.diag(cov)))


def class_posterior(num_classes: int, log_evidence) -> np.ndarray:
    """``P(plane k has class j | y)`` ``(Z, K)``: the exact mixture over all ``K^Z`` class assignments,
    each weighted by its evidence (``log_evidence``, from :func:`evidence`)."""
    from itertools import product

    assignments = list(product(range(num_classes), repeat=PLANES))
    log_w = np.array([log_evidence(labels) for labels in assignments])
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    marginal = np.zeros((PLANES, num_classes))
    for weight, labels in zip(w, assignments):
        marginal[np.arange(PLANES), list(labels)] += weight
    return marginal


def flip_log_odds(labels: list[int], log_evidence) -> list[float]:
    """Per plane: log evidence of the true ``labels`` minus that with this one plane's class changed (two classes)."""
    true = log_evidence(labels)
    return [
        true - log_evidence([1 - label if j == k else label for j, label in enumerate(labels)]) for k in range(PLANES)
    ]


def single_flip_maxima(labels: list[int], log_evidence) -> list[tuple[tuple[int, ...], float]]:
    """The class assignments (two classes) that no change of one plane's class improves, with their log evidence
    relative to the true ``labels``, best first."""
    from itertools import product

    values = {a: log_evidence(a) for a in product((0, 1), repeat=PLANES)}
    flips = lambda a: (tuple(1 - v if j == k else v for j, v in enumerate(a)) for k in range(PLANES))  # noqa: E731
    maxima = [a for a, v in values.items() if all(v >= values[f] for f in flips(a))]
    true = values[tuple(labels)]
    return sorted(((a, values[a] - true) for a in maxima), key=lambda item: -item[1])


def scores(c: dict, post: tuple[np.ndarray, np.ndarray], mean: np.ndarray, var=None, interval=None) -> dict:
    x = torch.from_numpy(mean)
    op, y, truth = c["op"], c["y"], c["truth"].numpy()
    classes = c["prior"].classify(x.float()).tolist()
    row = {
        "kept": sum(int(a == b) for a, b in zip(classes, c["labels"])),
        "residual": float(((op.forward(x) - y) ** 2).mean().sqrt()) / NOISE,
        "truth err": float(np.sqrt(((mean - truth) ** 2).mean())),
        "mean err": float(np.sqrt((((mean - post[0]) ** 2) / post[1]).mean())),
    }
    if var is not None:
        row["var ratio"] = float((var / post[1]).mean())
        low, high = interval
        row["coverage"] = float(((truth >= low) & (truth <= high)).mean())
    return row


def chw(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, 1).astype(np.float64)


def run_ensemble(c: dict, op, args, plane_exchange: bool = True) -> tuple[dict, float]:
    image = np.moveaxis(c["y"].numpy(), 1, -1).astype(np.float32)
    started = time.perf_counter()
    ens = ensemble(
        image,
        op,
        model=c["prior"],
        samples=args.samples,
        steps=args.steps,
        noise=NOISE,
        intensity_range=(-1.0, 1.0),
        batch_size=PLANES,
        schedule=args.schedule,
        seed=args.seed,
        plane_exchange=plane_exchange,
        **({} if args.cg_iterations is None else {"cg_iterations": args.cg_iterations}),
        **({} if args.dc_every is None else {"dc_every": args.dc_every}),
    )
    seconds = time.perf_counter() - started
    low, high = ens.interval(LEVEL)
    labels = np.array([c["prior"].classify(torch.from_numpy(chw(sample)).float()).tolist() for sample in ens.samples])
    right = (labels == np.array(c["labels"])).mean(axis=0)
    print("  share of samples with the true class, per plane:", " ".join(f"{r:.2f}" for r in right))
    result = {"mean": chw(ens.mean), "var": chw(ens.std) ** 2, "interval": (chw(low), chw(high)), "labels": labels}
    return result, seconds


def richardson_lucy(c: dict, iterations: int) -> tuple[np.ndarray, float]:
    """3-D Richardson-Lucy (scikit-image) per channel on the measurement mapped to [0, 1].

    scikit-image convolves with zeros outside the volume; the measurement is mirror-padded by the
    PSF's reach first (numpy's "symmetric", the boundary of ``VolumeBlur``) and the result cropped.
    """
    from skimage.restoration import richardson_lucy as rl

    psf = c["op"].psf.numpy()
    pad = [(n // 2, n // 2) for n in psf.shape]
    inner = tuple(slice(n // 2, -(n // 2) or None) for n in psf.shape)
    started = time.perf_counter()
    channels = []
    for ch in range(3):
        y = np.pad(np.clip((c["y"][:, ch].numpy() + 1) / 2, 0, None), pad, mode="symmetric")
        channels.append(rl(y, psf, num_iter=iterations, clip=False)[inner])
    return 2 * np.stack(channels, axis=1) - 1, time.perf_counter() - started


def print_class_evidence(c: dict, a: np.ndarray) -> None:
    """The exact class figures of a two-class case: ``P(true class | y)``, the log odds of flipping one
    plane, and what the prior's Gaussian relaxation knows (``a``: the dense operator)."""
    factor = measurement_factor(c, a)
    log_evidence = evidence(c, a, factor)
    marginal = class_posterior(c["prior"].num_classes, log_evidence)
    truth_p = marginal[np.arange(PLANES), c["labels"]]
    print("exact P(true class | y) per plane:", " ".join(f"{p:.2f}" for p in truth_p))
    odds = flip_log_odds(c["labels"], log_evidence)
    print("exact log odds of each plane's true class, the others true (nats):", " ".join(f"{o:.1f}" for o in odds))
    print(
        f"planes whose most probable class (exact mixture posterior) is the truth's: {(truth_p > 0.5).sum()}/{PLANES}"
    )
    for labels, gap in single_flip_maxima(c["labels"], log_evidence):
        print(f"assignment no one-plane change improves: {labels}, log evidence {gap:+.1f} nats from the truth's")
    side = relaxed_class_side(c, a, factor)
    print("the prior's Gaussian relaxation (two moments): P(class on the truth's side | y) per plane:", end=" ")
    print(" ".join(f"{p:.2f}" for p in side))


def table(classes: tuple[str, ...], args) -> list[str]:
    c = case(classes, args.seed)
    post = exact_posterior(c)
    in_focus = KernelBlur(c["op"].psf[c["op"].depth // 2].numpy())
    rows = [("exact posterior mean (given the classes)", scores(c, post, post[0]), 0.0)]
    candidates = [
        ("volume solve (VolumeBlur)", c["op"], True),
        ("volume solve, each sample alone (plane_exchange=False)", c["op"], False),
        ("plane by plane (in-focus slice, KernelBlur)", in_focus, True),
    ]
    candidates += [(f"volume + z-coupling mu={mu:g}", ZCoupled(c["op"].psf.numpy(), mu), True) for mu in args.couplings]
    for name, op, exchange in candidates:
        print(f"{classes}: {name}", flush=True)
        result, seconds = run_ensemble(c, op, args, exchange)
        rows.append((name, scores(c, post, result["mean"], result["var"], result["interval"]), seconds))
    for iterations in args.rl_iterations:
        estimate, seconds = richardson_lucy(c, iterations)
        rows.append((f"3-D Richardson-Lucy, {iterations} iterations", scores(c, post, estimate), seconds))
    if len(classes) > 1:
        print_class_evidence(c, c["dense"])
    lines = [
        "| estimate | classes kept | 3-D residual (noise units) | 90 % coverage | variance ratio "
        "| mean error (posterior sd) | RMS error vs truth | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r, seconds in rows:
        coverage = f"{r['coverage']:.1%}" if "coverage" in r else "-"
        ratio = f"{r['var ratio']:.2f}" if "var ratio" in r else "-"
        lines.append(
            f"| {name} | {r['kept']}/{PLANES} | {r['residual']:.2f} | {coverage} | {ratio} | {r['mean err']:.2f} "
            f"| {r['truth err']:.3f} | {seconds:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dc-every", type=int, default=None, help="a data step every this many steps")
    parser.add_argument(
        "--cg-iterations", type=int, default=None, help="CG iterations per data step (default: the schedule's)"
    )
    parser.add_argument("--couplings", type=float, nargs="*", default=[1e-3, 1e-2], help="z-coupling weights mu")
    parser.add_argument("--rl-iterations", type=int, nargs="*", default=[10, 30])
    parser.add_argument("--one-class-only", action="store_true")
    parser.add_argument("--evidence-only", action="store_true", help="only the exact class figures (two classes)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.evidence_only:
        c = case(("disk", "square"), args.seed)
        print_class_evidence(c, dense(c["op"], (PLANES, SIZE, SIZE)))
        return
    cases = [("disk",)] if args.one_class_only else [("disk", "square"), ("disk",)]
    for classes in cases:
        print(f"\n{' / '.join(classes)} ({len(classes)} class{'es' if len(classes) > 1 else ''}):\n")
        print("\n".join(table(classes, args)), flush=True)


if __name__ == "__main__":
    main()
