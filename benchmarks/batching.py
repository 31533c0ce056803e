"""Planes per second for a stack solved at batch size 1 and 4.

GPU (default): random full-size SD 1.5, fp16, 4 planes of 512x512 (x16 SR), --steps 50
(issue 15 measures the reference schedule: --steps 200). --tiny: the tiny test model on the CPU.
Reports planes/s per batch size and ``batch_4_over_batch_1`` (issue 15's target: at least 1.3).
--unsliced-vae adds a row at the largest batch with VAE slicing off (what slicing costs).

    python benchmarks/batching.py [--tiny] [--steps 50] [--planes 4] [--unsliced-vae]

Writes $OUT/batching.json when OUT is set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import build_sd15_prior, environment, peak_gib, peak_reserved_gib, reset_peak, sync, table, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--planes", type=int, default=4)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--unsliced-vae", action="store_true", help="also the largest batch with VAE slicing off")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_treg import restore
    from napari_treg.operators import SuperResolution

    if args.tiny:
        from napari_treg.models import load_model

        prior, size = load_model("tiny", device="cpu"), 64
    else:
        prior, size = build_sd15_prior("cuda", torch.float16), 512
    y = np.random.default_rng(0).uniform(0, 1, (args.planes, size // 16, size // 16, 3)).astype(np.float32)
    kwargs = dict(model=prior, steps=args.steps, rgb=True, prompt="a photograph")
    batches = [int(b) for b in args.batches.split(",")]
    for batch in batches:  # warm-up: records the CUDA graphs of each batch size
        restore(y[:batch], SuperResolution(16), batch_size=batch, **{**kwargs, "steps": 3})
    result = {"env": environment(), "model": prior.name, "size": size, "steps": args.steps, "planes": args.planes}
    for batch in batches:
        result[f"batch_{batch}"] = timed_stack(restore, y, batch, kwargs, args.planes)
    rates = [result[f"batch_{b}"]["planes_per_s"] for b in (min(batches), max(batches))]
    result[f"batch_{max(batches)}_over_batch_{min(batches)}"] = round(rates[1] / rates[0], 3)
    name = "batching" + ("_tiny_cpu" if args.tiny else "")
    write_json(name, result, echo=False)  # kept if a time limit stops the row below
    if args.unsliced_vae:
        prior.vae.disable_slicing()
        prior.graphs.clear()
        restore(y[: max(batches)], SuperResolution(16), batch_size=max(batches), **{**kwargs, "steps": 3})
        row = timed_stack(restore, y, max(batches), kwargs, args.planes)
        prior.vae.enable_slicing()
        result[f"batch_{max(batches)}_unsliced_vae"] = row
        result[f"batch_{max(batches)}_unsliced_vae_over_batch_{min(batches)}"] = round(
            row["planes_per_s"] / rates[0], 3
        )
    table([(k, v) for k, v in result.items() if k != "env"])
    write_json(name, result)


def timed_stack(restore, y: np.ndarray, batch: int, kwargs: dict, planes: int) -> dict:
    """Seconds, planes/s and peak memory of one restore of the whole stack at ``batch``."""
    from napari_treg.operators import SuperResolution

    reset_peak()
    sync()
    start = time.perf_counter()
    restore(y, SuperResolution(16), batch_size=batch, **kwargs)
    sync()
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 3),
        "planes_per_s": round(planes / seconds, 4),
        "peak_gib": peak_gib(),
        "peak_reserved_gib": peak_reserved_gib(),
    }


if __name__ == "__main__":
    main()
