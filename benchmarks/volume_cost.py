"""What a volume solve costs beyond plane by plane: the 3-D conjugate gradient against the model calls.

A stack of ``--planes`` planes (64x64, grey) restored with the tiny random-weight SD (CPU or GPU)
by a 3-D Gaussian PSF (sigma_xy 1.5 px, sigma_z 1 plane; 7 x 13 x 13) as one volume, and plane by
plane with its in-focus slice. The prior's calls (noise prediction, encode, decode, image embedding)
and the data steps (every ``A^T A`` product of the conjugate gradients) are timed apart; model calls
are counted. On a CUDA device the peak memory of each run is printed too.

    python benchmarks/volume_cost.py                       # 16, 32 and 64 planes, batch 4, 6 steps
    python benchmarks/volume_cost.py --planes 64 --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_treg.engine.restorer import Restorer
from napari_treg.models import load_model
from napari_treg.operators import KernelBlur, VolumeBlur
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config


def gaussian_psf(sigma_z=1.0, sigma_xy=1.5, radius_z=3, radius_xy=6) -> np.ndarray:
    rz, rxy = np.arange(-radius_z, radius_z + 1), np.arange(-radius_xy, radius_xy + 1)
    gz, gxy = np.exp(-0.5 * (rz / sigma_z) ** 2), np.exp(-0.5 * (rxy / sigma_xy) ** 2)
    return gz[:, None, None] * gxy[None, :, None] * gxy[None, None, :]


class Timed:
    """Seconds spent in an object's methods, and how many calls."""

    def __init__(self, target, names, clock):
        self.seconds, self.calls = 0.0, 0
        for name in names:
            setattr(target, name, self.wrap(getattr(target, name), clock))

    def wrap(self, method, clock):
        def timed(*args, **kwargs):
            started = clock()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += clock() - started
                self.calls += 1

        return timed


def run(prior, operator, image, args, clock) -> dict:
    model = Timed(prior, ("predict_noise", "encode", "decode", "embed_image"), clock)
    noise_calls = Timed(prior, ("predict_noise",), clock)
    data = Timed(operator, ("normal",), clock)
    config = method_config(DEFAULT_SCHEDULE, {"steps": args.steps})
    if torch.cuda.is_available() and prior.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = clock()
    Restorer(prior, config).restore(image, operator, batch_size=args.batch_size, seed=0)
    total = clock() - started
    peak = torch.cuda.max_memory_allocated() / 2**20 if prior.device.type == "cuda" else None
    return {"total": total, "model": model.seconds, "data": data.seconds, "calls": noise_calls.calls, "peak": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(1)

    def clock() -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    psf = gaussian_psf()
    print(f"tiny SD on {args.device}, {args.size}x{args.size} planes, batch {args.batch_size}, {args.steps} steps\n")
    print("| planes | solve | total s | model calls | model s | data steps (A^T A) s | data / model | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for planes in args.planes:
        image = np.random.default_rng(0).random((planes, args.size, args.size)).astype(np.float32)
        for name, operator in (("volume", VolumeBlur(psf)), ("plane by plane", KernelBlur(psf[psf.shape[0] // 2]))):
            prior = load_model("tiny", device=args.device)
            r = run(prior, operator, image, args, clock)
            peak = "-" if r["peak"] is None else f"{r['peak']:.0f}"
            print(
                f"| {planes} | {name} | {r['total']:.1f} | {r['calls']} | {r['model']:.1f} | {r['data']:.1f} "
                f"| {r['data'] / r['model']:.2f} | {peak} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
