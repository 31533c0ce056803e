"""GPU memory benchmark: peak of a 512x512 TReg solve, default vs low-memory mode, on an 8 GB profile.

Random full-size SD 1.5 in fp16 (benchmarks/sd15_random.py). The process is capped at
8 GiB with torch.cuda.set_per_process_memory_fraction (an 8 GB consumer GPU), then
each configuration runs one solve (x16 SR to 512x512, CFG, adaptive negation, data
consistency; --steps only changes the time, not the peak) and reports
torch.cuda.max_memory_allocated, max_memory_reserved (which includes the CUDA-graph pool)
and the solve time. ``auto`` rows restore 4 planes with ``batch_size="auto"`` and say which
batch size it chose under the cap.

    python benchmarks/gpu_memory.py [--steps 30] [--cap-gib 8]

Writes $OUT/gpu_memory.json when OUT is set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import build_sd15_prior, environment, peak_gib, peak_reserved_gib, reset_peak, table, write_json  # noqa: E402


def solve(prior, batch, steps: int, size: int = 512, planes: int | None = None, fresh: bool = True) -> dict:
    """One restore; ``fresh`` drops recorded CUDA graphs first, so the peak is this configuration's own."""
    from napari_treg import restore
    from napari_treg.operators import SuperResolution

    planes = planes or batch
    if fresh:
        prior.graphs.clear()
    y = np.random.default_rng(0).uniform(0, 1, (planes, size // 16, size // 16, 3)).astype(np.float32)
    reset_peak()
    start = time.perf_counter()
    try:
        _, info = restore(
            y, SuperResolution(16), model=prior, steps=steps, batch_size=batch, rgb=True, return_info=True
        )
        torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 - an out-of-memory result is a result
        return {
            "error": f"{type(error).__name__}: {str(error)[:200]}",
            "peak_gib": peak_gib(),
            "peak_reserved_gib": peak_reserved_gib(),
        }
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "peak_gib": peak_gib(),
        "peak_reserved_gib": peak_reserved_gib(),
        "batch_size": info["params"]["batch_size"],
        "graphs": len(prior.graphs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--cap-gib", type=float, default=8.0)
    args = ap.parse_args()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * 2**30 / total))
    prior = build_sd15_prior("cuda", torch.float16)
    result = {
        "env": environment(),
        "cap_gib": args.cap_gib,
        "steps": args.steps,
        "weights_gib": round(torch.cuda.memory_allocated() / 2**30, 3),
    }
    solve(prior, 1, 3)  # warm-up: cuDNN / cuBLAS workspaces
    for batch in (1, 2, 4):
        result[f"default_512_batch{batch}"] = solve(prior, batch, args.steps)
    result["default_512_auto_4_planes"] = solve(prior, "auto", args.steps, planes=4)
    solve(prior, 1, args.steps)
    result["default_512_auto_4_planes_after_batch1"] = solve(prior, "auto", args.steps, planes=4, fresh=False)
    result["default_1024_untiled"] = solve(prior, 1, args.steps, size=1024)
    prior.cuda_graphs = False
    result["default_512_no_graphs"] = solve(prior, 1, args.steps)
    result["default_512_batch4_no_graphs"] = solve(prior, 4, args.steps)
    prior.cuda_graphs = True
    prior.set_low_memory(True)
    result["weights_gib_low_memory"] = round(torch.cuda.memory_allocated() / 2**30, 3)
    result["low_memory_512"] = solve(prior, 1, args.steps)
    result["low_memory_512_batch4"] = solve(prior, 4, args.steps)
    result["low_memory_1024_untiled"] = solve(prior, 1, args.steps, size=1024)
    result["low_memory_512_auto_4_planes"] = solve(prior, "auto", args.steps, planes=4)
    table([(k, v) for k, v in result.items() if k != "env"])
    write_json("gpu_memory", result)


if __name__ == "__main__":
    main()
