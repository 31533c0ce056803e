"""Data first, text where the data leave it open: schedules 'paper' and 'data-first' on the analytic prior.

Measures the targets of issue 20 on the exact analytic prior (disk / square, docs/analytic.md) and
writes the section "Data first" into ``docs/validation.md`` (benchmarks/validation.py keeps it):

- other class as prompt: true class kept on SR x4, Gaussian deblur sigma 3, motion blur 9 px (and SR x8);
- no text: true class on SR x4, SR x8 and the Gaussian deblur;
- ambiguous (SR x16, inpainting hiding the object): the prompt decides; without text both classes appear;
- residual (true-class prompt) in noise units, seconds per image and model calls per image;
- the text-conflict flag (solver/conflict.py) on decisive conflicts, matching prompts and ambiguous data,
  with the noise level given and estimated from each measurement (noise.estimate_noise).

    .venv/bin/python benchmarks/data_first.py --write     # 20 seeds of 64x64, 200 steps (~15 min, 1 thread)
    .venv/bin/python benchmarks/data_first.py --quick     # a smoke run, nothing written
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.imaging.noise import estimate_noise
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import GaussianBlur, Inpainting, LinearOperator, MotionBlur, SuperResolution
from napari_treg.solver import TRegSettings, schedule_settings, treg_sample
from napari_treg.solver.conflict import FLAG_NATS, ConflictCheck

NOISE = 0.01
SCHEDULES = ("paper", "data-first")
BLOCK = ("<!-- data-first:start -->", "<!-- data-first:end -->")
DOC = Path(__file__).resolve().parents[1] / "docs" / "validation.md"


def tasks(size: int) -> tuple[dict[str, LinearOperator], dict[str, LinearOperator]]:
    """(decisive, ambiguous) operators: the data decide the class, or leave it open."""
    hidden = np.zeros((size, size), bool)
    margin = 5 * size // 32
    hidden[margin:-margin, margin:-margin] = True  # hides the whole object
    decisive = {
        "SR x4": SuperResolution(4),
        "deblur σ3": GaussianBlur(3.0),
        "motion 9 px": MotionBlur(9, 30),
        "SR x8": SuperResolution(8),
    }
    return decisive, {"SR x16": SuperResolution(16), "hidden object": Inpainting(hidden)}


class CountingPrior(AnalyticPrior):
    """The analytic prior counting its model calls (a CFG call of a batch counts once)."""

    calls = 0

    def predict_noise(self, z, t, text):
        CountingPrior.calls += 1
        return super().predict_noise(z, t, text)


def ground_truth(prior: AnalyticPrior, seeds: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.arange(seeds) % 2
    images = [
        prior.sample(1, int(k), (size, size), torch.Generator().manual_seed(10_000 + i))[0]
        for i, k in enumerate(labels)
    ]
    return torch.cat(images), labels


def run(prior, y, op, size, prompts, config) -> dict:
    """One batch of restorations: classes, residuals (noise units), conflict evidence (nats), time, calls."""
    check = ConflictCheck(prior, op, y, NOISE)
    generators = [torch.Generator().manual_seed(k) for k in range(len(y))]
    CountingPrior.calls = 0
    started = time.perf_counter()
    x = treg_sample(
        prior,
        y,
        op,
        (size, size),
        text=prior.embed_text(prompts),
        null=prior.embed_text([""] * len(prompts)),
        config=config,
        generators=generators,
        callback=check,
    )
    seconds = (time.perf_counter() - started) / len(y)
    residual = (op(x) - y).flatten(1).norm(dim=1) / (NOISE * y[0].numel() ** 0.5)
    return {
        "classes": prior.classify(x),
        "residual": residual,
        "deficit": check.evidence(),
        "seconds": seconds,
        "calls": CountingPrior.calls,
    }


def estimated_noise(y: torch.Tensor, op: LinearOperator) -> torch.Tensor:
    """The noise sigma estimated from each measurement alone, as the engine does when none is given
    (the true one where the measurement is too small to estimate it)."""
    try:
        return torch.tensor([estimate_noise(y[k : k + 1].numpy(), op) for k in range(len(y))])
    except InvalidInputError:
        return torch.full((len(y),), NOISE)


def flag_rates(deficit: torch.Tensor | None, estimated: torch.Tensor) -> tuple[float, float]:
    """Fractions flagged with the noise level given, and estimated (nats scale as 1 / sigma^2)."""
    if deficit is None:
        return 0.0, 0.0
    given = deficit > FLAG_NATS
    scaled = deficit * (NOISE / estimated) ** 2 > FLAG_NATS
    return float(given.float().mean()), float(scaled.float().mean())


def measure_schedule(prior, name, steps, size, truth, labels) -> dict:
    config = replace(TRegSettings(steps=steps), **schedule_settings(name))
    plain = replace(config, guidance=0.0)
    own = [prior.classes[int(k)] for k in labels]
    other = [prior.classes[(int(k) + 1) % 2] for k in labels]
    decisive, ambiguous = tasks(size)
    row: dict = {"seconds": [], "calls": [], "conflict": [], "match": [], "open": []}
    for task, op in {**decisive, **ambiguous}.items():
        y = measure(op, truth)
        sigma = estimated_noise(y, op)
        against = run(prior, y, op, size, other, config)
        row[f"other {task}"] = float((against["classes"] == labels).float().mean())
        if task in decisive:
            matched = run(prior, y, op, size, own, config)
            free = run(prior, y, op, size, [""] * len(y), plain)
            row[f"free {task}"] = float((free["classes"] == labels).float().mean())
            row[f"residual {task}"] = float(matched["residual"].mean())
            row["seconds"].append(matched["seconds"])
            row["calls"].append(matched["calls"])
            if task != "SR x8":  # borderline: not a target either way
                row["conflict"].append(flag_rates(against["deficit"], sigma))
                row["match"].append(flag_rates(matched["deficit"], sigma))
        else:
            free = run(prior, y, op, size, [""] * len(y), plain)
            row[f"free {task}"] = float((free["classes"] == 0).float().mean())  # fraction of disks
            row["open"].append(flag_rates(against["deficit"], sigma))
        print(name, task, {k: v for k, v in row.items() if task in k}, flush=True)
    return row


def measure(op: LinearOperator, x: torch.Tensor) -> torch.Tensor:
    ax = op(x)
    return ax + NOISE * torch.randn(ax.shape, generator=torch.Generator().manual_seed(20_000))


def mean_rates(pairs: list[tuple[float, float]]) -> str:
    given, estimated = np.mean([p[0] for p in pairs]), np.mean([p[1] for p in pairs])
    return f"{given:.0%} / {estimated:.0%}"


def report(rows: dict[str, dict], args: argparse.Namespace, seconds: float) -> str:
    lines = [
        BLOCK[0],
        "## Data first: the data decide, the prompt only where they leave it open",
        "",
        f"- Command: `python benchmarks/data_first.py --write` ({platform.platform()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU thread(s), {seconds:.0f} s on two CPU cores shared with other jobs)",
        f"- {args.seeds} seeds of {args.size}x{args.size} (ground truth alternating disk / square, each its own sample), "
        f"noise σ = {NOISE}, {args.steps} steps, w = {TRegSettings().guidance:g}; schedule 'data-first' is "
        f"{schedule_settings('data-first')}.",
        "- Other prompt: the other class is the prompt; the fraction of restorations that kept the true class. "
        "No text: w = 0, fraction of the true class. Ambiguous tasks: the fraction that followed the other-class "
        "prompt; without text the fraction of disks (both classes appear: about 50 %).",
        "- Residual: ‖Ax − y‖ / (σ√m) with the true-class prompt (1 = the noise level). Seconds and model calls "
        "per image with the true-class prompt, mean over the four decisive tasks (a CFG call counts once).",
        f"- Text-conflict flag (`info['text_conflict']`, threshold {FLAG_NATS:g} nats): the fraction of runs flagged "
        "with the noise level given / estimated from the measurement (`noise.estimate_noise`): on decisive "
        "conflicts (other prompt on SR x4, deblur, motion), on matching prompts (true class, same tasks) and on "
        "ambiguous data (other prompt on SR x16 and the hidden object; SR x16's 4x4 measurement is too small to "
        "estimate the noise, so the given σ is used for it).",
        "",
        "| schedule | other prompt: true kept SR x4 / deblur / motion / (SR x8) | no text: true SR x4 / SR x8 / deblur "
        "| ambiguous: prompt decides SR x16 / hidden | no text: disks SR x16 / hidden "
        "| residual / noise SR x4 / deblur / motion | s / image | model calls / image "
        "| flag: conflict | flag: match | flag: ambiguous |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['other SR x4']:.0%} / {row['other deblur σ3']:.0%} / {row['other motion 9 px']:.0%} / "
            f"({row['other SR x8']:.0%}) | {row['free SR x4']:.0%} / {row['free SR x8']:.0%} / {row['free deblur σ3']:.0%} "
            f"| {1 - row['other SR x16']:.0%} / {1 - row['other hidden object']:.0%} "
            f"| {row['free SR x16']:.0%} / {row['free hidden object']:.0%} "
            f"| {row['residual SR x4']:.2f} / {row['residual deblur σ3']:.2f} / {row['residual motion 9 px']:.2f} "
            f"| {np.mean(row['seconds']):.3f} | {np.mean(row['calls']):.0f} "
            f"| {mean_rates(row['conflict'])} | {mean_rates(row['match'])} | {mean_rates(row['open'])} |"
        )
    lines += ["", BLOCK[1]]
    return "\n".join(lines)


def write_block(text: str, path: Path) -> None:
    """Replace (or append) the section between the markers in ``path``."""
    old = path.read_text()
    if BLOCK[0] in old and BLOCK[1] in old:
        before, rest = old.split(BLOCK[0], 1)
        new = before + text + rest.split(BLOCK[1], 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    parser.add_argument("--write", action="store_true", help=f"write the section into {DOC}")
    parser.add_argument("--quick", action="store_true", help="4 seeds, 32 px, 20 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.size, args.steps = 4, 32, 20
    torch.set_num_threads(args.threads)
    prior = CountingPrior()
    truth, labels = ground_truth(prior, args.seeds, args.size)
    started = time.perf_counter()
    rows = {name: measure_schedule(prior, name, args.steps, args.size, truth, labels) for name in args.schedules}
    text = report(rows, args, time.perf_counter() - started)
    print(text)
    if args.write:
        write_block(text, DOC)
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
