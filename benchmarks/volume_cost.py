"""What a volume solve costs beyond plane by plane: the 3-D conjugate gradient against the model calls.

A stack of ``--planes`` planes (64x64, grey) restored with the tiny random-weight SD (CPU or GPU)
by a 3-D Gaussian PSF (sigma_xy 1.5 px, sigma_z 1 plane; 7 x 13 x 13) as one volume, and plane by
plane with its in-focus slice. The prior's calls (noise prediction, encode, decode, image embedding)
and the data steps (every ``A^T A`` product of the conjugate gradients) are timed apart; model calls
are counted. On a CUDA device the peak memory of each run is printed too.

With ``--memory`` the script measures host memory instead (CPU, Linux): every run is a fresh
process that loads the model, resets its resident-set high-water mark (``/proc/self/clear_refs``)
and restores; the peak resident memory of the restore above the process's memory before it is
reported for ``batch_size`` planes denoised (the identity operator: the model's share, one batch of
planes through the model, and no blur) and for each ``--planes`` as a volume and denoised plane by
plane, beside the growth over the first in
units of image arrays of the added planes (``(Z - batch_size) x 3 x H x W`` float32, the unit of the
volume's own arrays: measurement, estimate, conjugate-gradient vectors).

    python benchmarks/volume_cost.py                       # 16, 32 and 64 planes, batch 4, 6 steps
    python benchmarks/volume_cost.py --planes 64 --device cuda
    python benchmarks/volume_cost.py --memory --size 128 --steps 2
    python benchmarks/volume_cost.py --memory --size 128 --steps 2 --compare "plane by plane"
    python benchmarks/volume_cost.py --memory-parts --planes 32 --size 128  # a data step's parts apart
    python benchmarks/volume_cost.py --fft --planes 32 --size 128   # A^T A: direct conv3d against FFT

``--fft`` times one ``A^T A`` of the data step (float32, as the conjugate gradient runs it) by the
direct ``conv3d`` and by FFT (in float32, and in float64 rounded to float32) for a 7 x 13 x 13 and a
15 x 31 x 31 Gaussian PSF, each against the exact (float64) product.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import torch

from napari_treg.engine.restorer import Restorer
from napari_treg.models import load_model
from napari_treg.operators import Denoising, KernelBlur, VolumeBlur
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


def resident_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (high-water mark) of this process, MiB (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


#: the parts of a volume restore measured apart by ``--memory-parts``
PARTS = ("data step", "float64 residual", "A^T A")


def part_run(args) -> None:
    """One part of a volume restore on random planes in this process; prints its peak above the start (JSON)."""
    from napari_treg.imaging.metrics import residual_sums
    from napari_treg.solver.cg import data_consistency

    operator = VolumeBlur(gaussian_psf())
    rng = np.random.default_rng(0)
    y, x0 = (torch.from_numpy(rng.random((args.one_run, 3, args.size, args.size), np.float32)) for _ in range(2))
    parts = {
        "data step": lambda: data_consistency(operator, y, x0, 1.0, 5),
        "float64 residual": lambda: residual_sums(operator, x0, y),
        "A^T A": lambda: operator.normal(x0),
    }
    before = resident_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    parts[args.solve]()
    print(json.dumps({"before": before, "peak": resident_mib("VmHWM")}))


def parts_table(args) -> None:
    planes = args.planes[0]
    array_mib = planes * 3 * args.size * args.size * 4 / 2**20
    print(f"{planes} planes of 3x{args.size}x{args.size}, 7x13x13 PSF, 5 CG iterations: peak above start\n")
    print("| part | peak MiB | stack-sized float32 image arrays |")
    print("|---|---|---|")
    for part in PARTS:
        peak = measured_memory(args, planes, part)
        print(f"| {part} | {peak:.0f} | {peak / array_mib:.1f} |", flush=True)


def memory_run(args) -> None:
    """One restore in this process; prints its peak resident memory above the memory before it (JSON)."""
    if args.solve in PARTS:
        return part_run(args)
    prior = load_model("tiny", device="cpu")
    psf = gaussian_psf()
    operators = {
        "volume": VolumeBlur(psf),
        "plane by plane": KernelBlur(psf[psf.shape[0] // 2]),
        "denoise": Denoising(),
    }
    operator = operators[args.solve]
    image = np.random.default_rng(0).random((args.one_run, args.size, args.size)).astype(np.float32)
    restorer = Restorer(prior, method_config(DEFAULT_SCHEDULE, {"steps": args.steps}))
    before = resident_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the high-water mark starts again at the current resident memory
    restorer.restore(image, operator, batch_size=args.batch_size, seed=0)
    print(json.dumps({"before": before, "peak": resident_mib("VmHWM")}))


def measured_memory(args, planes: int, solve: str) -> float:
    """Peak resident MiB of one restore above the process's memory before it, in a fresh process."""
    command = [sys.executable, __file__, "--one-run", str(planes), "--solve", solve]
    command += ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--size", str(args.size)]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    return result["peak"] - result["before"]


def memory_table(args) -> None:
    array_mib = 3 * args.size * args.size * 4 / 2**20  # one plane of one image array, MiB
    print(f"tiny SD on cpu, {args.size}x{args.size} planes, batch {args.batch_size}, {args.steps} steps, host memory\n")
    print(
        "| planes | solve | peak above start MiB | growth over batch_size planes MiB | growth / stack-sized image array |"
    )
    print("|---|---|---|---|---|")
    base = measured_memory(args, args.batch_size, "denoise")  # the model's share: one batch of planes
    print(f"| {args.batch_size} | denoise | {base:.0f} | - | - |", flush=True)
    for planes in args.planes:
        for solve in ("volume", *args.compare):
            peak = measured_memory(args, planes, solve)
            growth = peak - base
            arrays = growth / (array_mib * (planes - args.batch_size))
            print(f"| {planes} | {solve} | {peak:.0f} | {growth:.0f} | {arrays:.1f} |", flush=True)


def fft_normal(operator: VolumeBlur, x: torch.Tensor) -> torch.Tensor:
    """``A^T A x`` by FFT in ``x``'s dtype (the float64 path of :class:`VolumeBlur`, here for any dtype)."""
    from napari_treg.operators import volume

    kernel = torch.flip(operator.psf, dims=(0, 1, 2)).to(x)  # a convolution is the flipped correlation
    forward = volume.fft_correlate_valid(volume.mirror_pad_3d(volume.as_volume(x, len(x)), kernel.shape), kernel)
    spread = volume.fft_convolve_full(forward, kernel)
    return volume.as_planes(volume.mirror_pad_3d_adjoint(spread, kernel.shape, tuple(x.shape[-2:]), x.shape[0]))


def fft_table(args) -> None:
    planes = args.planes[0]
    x = torch.from_numpy(np.random.default_rng(0).random((planes, 3, args.size, args.size)).astype(np.float32))
    print(f"A^T A of {planes} planes of 3x{args.size}x{args.size}, float32, 1 thread\n")
    print("| PSF | path | seconds | max error vs exact / max |")
    print("|---|---|---|---|")
    paths = {
        "direct conv3d": lambda op: op.normal(x),
        "FFT float32": lambda op: fft_normal(op, x),
        "FFT float64": lambda op: fft_normal(op, x.double()).float(),
    }
    for radius_z, radius_xy in ((3, 6), (7, 15)):
        operator = VolumeBlur(gaussian_psf(radius_z=radius_z, radius_xy=radius_xy))
        exact = operator.normal(x.double())
        for name, path in paths.items():
            started = time.perf_counter()
            out = path(operator)
            seconds = time.perf_counter() - started
            error = float((out.double() - exact).abs().max() / exact.abs().max())
            shape = "x".join(map(str, operator.psf.shape))
            print(f"| {shape} | {name} | {seconds:.2f} | {error:.1e} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, nargs="+", default=[16, 32, 64])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--memory", action="store_true", help="peak host memory in fresh processes (CPU, Linux)")
    parser.add_argument(
        "--compare",
        nargs="+",
        default=["denoise"],
        choices=["denoise", "plane by plane"],
        help="--memory: the plane-by-plane runs beside the volume (plane by plane: the in-focus slice's KernelBlur)",
    )
    parser.add_argument("--memory-parts", action="store_true", help="peak host memory of a volume's data step parts")
    parser.add_argument("--fft", action="store_true", help="time A^T A by conv3d and by FFT")
    parser.add_argument("--one-run", type=int, help=argparse.SUPPRESS)  # one memory run of this many planes
    parser.add_argument("--solve", default="volume", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.one_run:
        return memory_run(args)
    if args.memory:
        return memory_table(args)
    if args.fft:
        return fft_table(args)
    if args.memory_parts:
        return parts_table(args)

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
