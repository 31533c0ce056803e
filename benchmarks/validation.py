"""Quality table of TReg and its baselines on the exact analytic prior (CPU).

Runs super-resolution x4 / x8 / x16, Gaussian and motion deblurring and box inpainting
on images drawn from the analytic Gaussian-mixture prior (disk / square), for each
method over ``--seeds`` seeds, and writes ``docs/validation.md``:

    .venv/bin/python benchmarks/validation.py            # the full table (~5 min, 1 thread)
    .venv/bin/python benchmarks/validation.py --quick    # a smoke run

These are results on a synthetic prior whose denoiser is exact, not on Stable Diffusion.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import GaussianBlur, Inpainting, LinearOperator, MotionBlur, SuperResolution
from napari_treg.solver import TRegSettings, conjugate_gradient, get_method, schedule_settings
from napari_treg.solver.baselines import is_non_negative

NOISE = 0.01
#: the section benchmarks/fidelity.py writes into docs/validation.md (it and all after it are kept when this
#: script rewrites the file)
FIDELITY_BLOCK = ("<!-- fidelity:start -->", "<!-- fidelity:end -->")
#: the section benchmarks/data_first.py writes (kept too)
DATA_FIRST_BLOCK = ("<!-- data-first:start -->", "<!-- data-first:end -->")


@dataclass(frozen=True)
class Method:
    """A row of the table: a registered method, its configuration, and whether it reads the prompt."""

    label: str
    name: str
    config: TRegSettings
    uses_text: bool


def methods(steps: int) -> list[Method]:
    base = TRegSettings(steps=steps)
    data_first = schedule_settings("data-first")
    w = f"w={base.guidance:g}"
    return [
        Method(f"TReg (prompt, {w})", "treg", base, True),
        Method("TReg, no adaptive negation", "treg", replace(base, adaptive_negation=False), True),
        Method("TReg, no text (w=0)", "treg", replace(base, guidance=0.0), False),
        Method("TReg, DC to the end", "treg", replace(base, dc_until=1.0), True),
        Method("TReg, schedule 'faithful'", "treg", replace(base, **schedule_settings("faithful")), True),
        Method("TReg, schedule 'data-first' (default)", "treg", replace(base, **data_first), True),
        Method("TReg 'data-first', no text (w=0)", "treg", replace(base, **data_first, guidance=0.0), False),
        Method(f"PSLD (prompt, {w})", "psld", base, True),
        Method("PSLD, no text (w=0)", "psld", replace(base, guidance=0.0), False),
        Method("Tikhonov (CG)", "tikhonov", base, False),
        Method("Richardson-Lucy", "richardson_lucy", base, False),
    ]


def tasks(size: int) -> dict[str, LinearOperator]:
    """The operators, scaled from the paper's 512 px setting to ``size``."""
    box = np.zeros((size, size), bool)
    box[size // 4 : 3 * size // 4, size // 2 : 3 * size // 4 + 1] = True  # right half of the object
    return {
        "SR x4 (bicubic)": SuperResolution(4),
        "SR x8 (bicubic)": SuperResolution(8),
        "SR x16 (bicubic)": SuperResolution(16),
        "Gaussian deblur (sigma 3 px)": GaussianBlur(3.0),
        "Motion deblur (9 px, 30 deg)": MotionBlur(9, 30),
        "Box inpainting (right half)": Inpainting(box),
    }


def ground_truth(prior: AnalyticPrior, seeds: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of alternating classes (disk, square, ...), each with its own seed."""
    images, labels = [], []
    for seed in range(seeds):
        label = seed % prior.num_classes
        x, _ = prior.sample(1, label, (size, size), torch.Generator().manual_seed(10_000 + seed))
        images.append(x)
        labels.append(label)
    return torch.cat(images), torch.tensor(labels)


def class_evidence(prior: AnalyticPrior, op: LinearOperator, size: int) -> float:
    """KL divergence (nats) between the measurement distributions of the two classes.

    ``y | k ~ N(A m_k, sigma^2 I + s^2 A A^T)``, so KL = ``0.5 d^T C^-1 d`` with ``d = A (m_0 - m_1)``
    (solved by CG). KL << 1: the measurement cannot tell the classes apart; KL >> 1: it decides.
    """
    means = prior.means((size, size)).double()
    d = op(means[:1] - means[1:2])

    def covariance(v: torch.Tensor) -> torch.Tensor:
        return NOISE**2 * v + prior.latent_std**2 * op(op.adjoint(v))

    solved = conjugate_gradient(covariance, d, torch.zeros_like(d), 500)
    return float(0.5 * (d * solved).sum())


def measure(op: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    ax = op(x)
    return ax + NOISE * torch.randn(ax.shape, generator=torch.Generator().manual_seed(20_000))


def run(prior, method: Method, op, y, size, prompts) -> tuple[torch.Tensor, float]:
    """Restore every measurement; returns the images and the seconds per image."""
    generators = [torch.Generator().manual_seed(k) for k in range(len(y))]
    text = prior.embed_text(prompts)
    null = prior.embed_text([""] * len(prompts))
    started = time.perf_counter()
    with torch.no_grad():
        x = get_method(method.name)(
            prior, y, op, (size, size), text=text, null=null, config=method.config, generators=generators
        )
    return x, (time.perf_counter() - started) / len(y)


def scores(prior, op, x, y, truth, labels) -> dict[str, float]:
    mse = (x - truth).square().flatten(1).mean(dim=1)
    noise_norm = NOISE * math.sqrt(y[0].numel())
    return {
        "accuracy": float((prior.classify(x) == labels).float().mean()),
        "psnr": float((10 * torch.log10(4.0 / mse)).mean()),
        "residual": float(((op(x) - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).mean()),
        "residual_noise": float(((op(x) - y).flatten(1).norm(dim=1) / noise_norm).mean()),
    }


def evaluate(prior, method, op, size, truth, labels) -> dict[str, float] | None:
    """One table row: scores with the true-class prompt, and class choices with the other-class prompt."""
    if method.name == "richardson_lucy" and not is_non_negative(op):
        return None
    y = measure(op, truth)
    own = [prior.classes[k] for k in labels]
    x, seconds = run(prior, method, op, y, size, own)
    row = scores(prior, op, x, y, truth, labels) | {"seconds": seconds}
    if method.uses_text:
        other = (labels + 1) % prior.num_classes
        x_other, _ = run(prior, method, op, y, size, [prior.classes[k] for k in other])
        chosen = prior.classify(x_other)
        row["other_true"] = float((chosen == labels).float().mean())
        row["other_prompt"] = float((chosen == other).float().mean())
        row["other_residual_noise"] = scores(prior, op, x_other, y, truth, labels)["residual_noise"]
    return row


def warm_up(prior: AnalyticPrior, size: int) -> None:
    """One short run of each method, so that one-off start-up costs stay out of the timings."""
    op = GaussianBlur(1.0)
    y = op(prior.means((size, size))[:1])
    for method in methods(4):
        run(prior, method, op, y, size, ["a disk"])


def table(rows: dict[str, dict[str, float | None]]) -> list[str]:
    lines = [
        "| method | class acc., true prompt | other prompt: true class / prompt class | PSNR (dB) "
        "| residual ‖Ax−y‖/‖y‖ | residual / noise (other prompt) | s / image |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        if row is None:
            lines.append(f"| {label} | n/a (needs a non-negative operator) | | | | | |")
            continue
        other, other_residual = "(no text)", ""
        if "other_true" in row:
            other = f"{row['other_true']:.0%} / {row['other_prompt']:.0%}"
            other_residual = f" ({row['other_residual_noise']:.2f})"
        lines.append(
            f"| {label} | {row['accuracy']:.0%} | {other} | {row['psnr']:.2f} | {row['residual']:.4f} "
            f"| {row['residual_noise']:.2f}{other_residual} | {row['seconds']:.3f} |"
        )
    return lines


def report(results: dict, evidences: dict, args: argparse.Namespace, prior: AnalyticPrior, total_seconds: float) -> str:
    command = "python benchmarks/validation.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    out = [
        "# Validation on the exact analytic prior",
        "",
        "**These are results on an exact synthetic prior, not on Stable Diffusion.** The prior is a",
        "Gaussian mixture of two same-area templates (disk, square) with per-pixel standard deviation",
        f"{prior.sigma:g} (in [0, 1] units), whose noise prediction is computed in closed form",
        "(`napari_treg.models.analytic`, see `docs/analytic.md`). It checks that the sampler does what",
        "the method says; it says nothing about image quality on natural images.",
        "",
        f"- Command: `{command}`",
        f"- Date: {now}; {platform.platform()}, torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s);"
        f" total {total_seconds:.0f} s",
        f"- {args.seeds} seeds per cell: ground truth k is drawn from class k mod 2 with its own seed; "
        f"images {args.size}x{args.size}, measurement noise sigma = {NOISE} on [-1, 1], {args.steps} DDIM steps.",
        "- Class accuracy: the nearest template of the restoration is the true class. With the *other* class as",
        '  prompt (the paper\'s "different class as prompt" case), the fraction that kept the true class / followed',
        "  the prompt.",
        "- PSNR against the ground-truth sample (peak-to-peak 2). The per-pixel variation of the prior is",
        "  unpredictable from the measurement: a method returning the exact posterior *mean* would score about",
        f"  {10 * math.log10(4 / (2 * prior.sigma) ** 2):.0f} dB where the measurement says nothing, posterior *samples* "
        f"about {10 * math.log10(4 / (2 * (2 * prior.sigma) ** 2)):.0f} dB.",
        "- Residual: ‖A x − y‖ / ‖y‖, and ‖A x − y‖ in units of the noise norm σ√m (1 = at the noise level).",
        "- Timings are per image of a batch of all seeds, on shared CPU cores (other jobs ran at the same time).",
        "- Class evidence: the KL divergence between the measurement distributions of the two classes, exact for",
        "  this prior (KL << 1: the measurement cannot tell disk from square; KL >> 1: it can).",
        f"- TReg's method defaults (the paper's schedule, `schedule='paper'`): w = {TRegSettings().guidance:g}, 200 steps, DC every 3rd step over "
        "the first 85 %, CG 5 iterations, λ = 1e-4,",
        '  adaptive negation lr 8e-4 × 10 Adam steps (a fresh Adam at every DC step). "DC to the end" sets',
        f"  dc_until = 1; schedule 'faithful' is {schedule_settings('faithful')} (see the fidelity table below).",
        "  PSLD: ω = 1, γ = 0.1, with the same classifier-free guidance. Tikhonov: smoothness weight 1e-2, CG for",
        "  `steps` iterations. Richardson-Lucy: `steps` iterations, only for non-negative operators (blurs).",
        f"- Schedule 'data-first', the default of `restore`, the CLI, batch and the widget: {schedule_settings('data-first')}"
        ' (docs/method.md; the section "Data first" below has its targets).',
        "",
    ]
    for task, rows in results.items():
        evidence = f"Exact class evidence of the measurement: KL = {evidences[task]:.3g} nats"
        verdict = "ambiguous" if evidences[task] < 1 else "the data decide the class"
        out += [f"## {task}", "", f"{evidence} ({verdict}).", "", *table(rows), ""]
    out += [
        "## Reading the table",
        "",
        "- With the true prompt every text-guided method restores the true class in every task.",
        "- Schedule 'data-first' (the default): where the data decide, the true class is kept also against the",
        "  other prompt, and found without text on SR x8; where they leave the class open (SR x16, the hidden",
        "  object) the prompt still decides; its final projection keeps the residual at or below the noise level.",
        "- SR x16 is ambiguous (KL << 1): without text the class is a coin flip, as in the exact posterior; with",
        "  a prompt TReg follows it, also when the measurement came from the other class (the paper's claim).",
        "- SR x8 is *not* ambiguous (KL of a few hundred nats), yet TReg without text picks the class at chance,",
        "  while PSLD without text finds it: TReg's re-noising mixes the data-consistent estimate in with weight",
        "  abar_prev (`z_bar = abar_prev z0y + (1 - abar_prev) z0`), about 0.005 in the first steps, so the coarse",
        "  structure (here the class) is chosen before the data can steer it.",
        "- Where the data decide, a prompt of the other class is followed by TReg on SR x8 and the Gaussian",
        "  deblur but (almost) not on SR x4, the motion deblur or the inpainting; PSLD follows it everywhere, at a",
        "  larger residual (the residual column's value in brackets).",
        "- Adaptive negation (a fresh Adam at every DC step, as in the authors' code) changes little here: the",
        "  two-class responsibilities saturate early, so moving the null text's class logits by ~0.5 changes at",
        "  most a seed's class (`tests/solver/test_solver_negation_claims.py` checks that it moves them, away from the class the estimate",
        "  shows).",
        "- With the paper's schedule TReg's residual stays above the noise level: data consistency stops at",
        "  85 % of the steps, and the last DDIM steps pull the estimate back toward the prior (strongly for a",
        "  tight prior like this one). With DC to the end it comes close to the noise level. The schedule",
        "  'faithful' (the paper's plus a final data-consistency projection, `final_dc`) brings it below the noise",
        "  level on super-resolution and inpainting and to about it on the Gaussian deblur, with the class choices",
        "  of the paper's schedule, at the cost of one CG solve; on the motion deblur its 5 CG iterations do not",
        "  converge and leave about 1.6 (see the fidelity table below: more CG iterations bring the Gaussian",
        "  deblur from 1.12 to 0.94). `tests/solver/test_solver_dc_claims.py` checks both sides.",
        "- Inpainting rows: the residual here counts the measurement noise that `y` holds at the unmeasured",
        "  pixels too (about √(fraction missing) = 0.36 noise units, which no restoration can remove); over the",
        "  measured pixels alone, the residual of the schedule 'faithful' is 0.00 (fidelity table below).",
        "- PSNR: samplers return posterior-like *samples*, the classical methods smooth estimates, which score",
        "  higher PSNR against a noisy ground truth; class accuracy is the measure of what text adds.",
        "",
    ]
    return "\n".join(out)


def kept_sections(path: Path) -> str:
    """What of the existing ``path`` this script does not write: everything from the first section another
    benchmark writes (:data:`FIDELITY_BLOCK`, :data:`DATA_FIRST_BLOCK`) on, the hand-written sections after
    them included; "" when there is none."""
    old = path.read_text() if path.exists() else ""
    starts = [old.index(marker) for marker, _ in (FIDELITY_BLOCK, DATA_FIRST_BLOCK) if marker in old]
    return "\n" + old[min(starts) :] if starts else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "validation.md")
    parser.add_argument("--quick", action="store_true", help="4 seeds, 32 px, 20 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.size, args.steps = 4, 32, 20
    torch.set_num_threads(args.threads)
    prior = AnalyticPrior()
    truth, labels = ground_truth(prior, args.seeds, args.size)
    warm_up(prior, args.size)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    evidences: dict[str, float] = {}
    for task, op in tasks(args.size).items():
        evidences[task] = class_evidence(prior, op, args.size)
        results[task] = {}
        for method in methods(args.steps):
            results[task][method.label] = evaluate(prior, method, op, args.size, truth, labels)
            print(f"{task:32s} {method.label:30s} {results[task][method.label]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = report(results, evidences, args, prior, time.perf_counter() - started)
    args.out.write_text(text + kept_sections(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
