"""``load_model("tiny", compile=True)`` restores like the eager model (the compile path, end to end).

A 32x32 image (x4 super-resolution of an 8x8 measurement), 2 steps, the tiny random-weight
model in float32, compiled exactly as ``load_model(..., compile=True)`` does (inductor; on CUDA
its ``reduce-overhead`` mode with inductor's own CUDA graphs) against the same model eager.
Exits 1 if the largest difference exceeds --tolerance times the eager result's range.

This is a script, not a test in tests/: inductor's first compilation of the tiny model took
830 s on the 2-core development machine (199 s with its cache warm), far beyond a test's budget.

    python benchmarks/compile_check.py [--device cpu|cuda] [--tolerance 3e-5]

Writes $OUT/compile_check[_cuda].json when OUT is set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import environment, write_json  # noqa: E402

#: the largest difference allowed, relative to the eager result's range; 2.9e-6 / 1.07 was measured on
#: the CPU (torch 2.13, this script, 2026-11-30), so this leaves a factor of 10
TOLERANCE = 3e-5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(1)
    from napari_treg import restore
    from napari_treg.models import load_model
    from napari_treg.operators import SuperResolution

    y = np.random.default_rng(0).uniform(0, 1, (8, 8, 3)).astype(np.float32)
    settings = dict(steps=2, prompt="a", seed=0, rgb=True)
    eager = restore(y, SuperResolution(4), model=load_model("tiny", device=args.device, dtype="float32"), **settings)
    compiled_prior = load_model("tiny", device=args.device, dtype="float32", compile=True)
    start = time.perf_counter()
    first = restore(y, SuperResolution(4), model=compiled_prior, **settings)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = restore(y, SuperResolution(4), model=compiled_prior, **settings)
    second_s = time.perf_counter() - start
    value_range = float(np.ptp(eager))
    worst = float(max(np.abs(first - eager).max(), np.abs(second - eager).max()))
    result = {
        "env": environment(),
        "device": args.device,
        "first_solve_s": round(first_s, 2),
        "second_solve_s": round(second_s, 3),
        "max_abs_vs_eager": worst,
        "range": value_range,
        "tolerance": args.tolerance,
        "passed": worst <= args.tolerance * value_range,
    }
    write_json("compile_check" + ("_cuda" if args.device.startswith("cuda") else ""), result)
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
