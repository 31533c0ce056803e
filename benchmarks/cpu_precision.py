"""Seconds of a restore on the CPU in each precision the model can run in (tiny model, 1 torch thread).

On the CPU torch runs float16 convolutions in a generic kernel (torch 2.13: ``_ConvBackend.Slow2d``; float32 and
bfloat16 go to oneDNN), so a float16 model is several times slower there and saves nothing a CPU lacks. The widget
therefore does not offer float16 when the device is the CPU (napari_treg.plugin.choices.precisions_for).

    python benchmarks/cpu_precision.py                  # 64x64, 10 steps, median of 3
    python benchmarks/cpu_precision.py --size 128 --steps 20
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from napari_treg import restore
from napari_treg.models.devices import DTYPE_CHOICES
from napari_treg.operators import GaussianBlur


def seconds(image: np.ndarray, dtype: str, steps: int) -> float:
    started = time.perf_counter()
    restore(image, GaussianBlur(1.0), model="tiny", device="cpu", dtype=dtype, steps=steps, seed=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    image = np.random.default_rng(0).random((args.size, args.size)).astype(np.float32)
    for dtype in DTYPE_CHOICES:
        seconds(image, dtype, 1)  # the model loaded and warmed in this precision
    print(
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.size}x{args.size}, "
        f"{args.steps} steps, median of {args.repeats}"
    )
    base = None
    for dtype in DTYPE_CHOICES:
        median = statistics.median(seconds(image, dtype, args.steps) for _ in range(args.repeats))
        base = base or median
        print(f"{dtype:>9}: {median:.2f} s ({median / base:.1f} x float32)")


if __name__ == "__main__":
    main()
