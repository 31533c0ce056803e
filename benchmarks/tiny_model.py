"""How fast the tiny test model builds and runs: the test suite leans on both (CPU).

Goals (the suite builds the tiny model in many tests and runs its UNet thousands of times):
building it under 1.0 s, one UNet forward of 2 latents of 8x8 under 0.25 s. Best of a few
runs (shared machines make single runs noisy). Exits 1 when a goal is missed.

    python benchmarks/tiny_model.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from napari_treg.models.tiny import build_tiny_prior

GOALS = {"build_seconds": 1.0, "unet_forward_seconds": 0.25}


def best_time(function, repeats: int) -> float:
    """Fastest of ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    prior = build_tiny_prior(seed=0)
    z, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    prior.predict_noise(z, 10, text)  # warm-up
    measured = {
        "build_seconds": best_time(lambda: build_tiny_prior(seed=0), args.repeats),
        "unet_forward_seconds": best_time(lambda: prior.predict_noise(z, 10, text), args.repeats),
    }
    missed = [name for name, goal in GOALS.items() if measured[name] >= goal]
    for name, value in measured.items():
        print(f"{name}: {value:.4f} (goal < {GOALS[name]}){'  MISSED' if name in missed else ''}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
