"""Planes per second for a stack solved at batch size 1 and 4.

GPU (default): random full-size SD 1.5, fp16, 4 planes of 512x512 (x16 SR), --steps 50
(planes/s at 200 steps is a quarter of that). --tiny: the tiny test model on the CPU.

    python benchmarks/batching.py [--tiny] [--steps 50] [--planes 4]

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
        reset_peak()
        sync()
        start = time.perf_counter()
        restore(y, SuperResolution(16), batch_size=batch, **kwargs)
        sync()
        seconds = time.perf_counter() - start
        result[f"batch_{batch}"] = {"seconds": round(seconds, 3), "planes_per_s": round(args.planes / seconds, 4),
                                    "peak_gib": peak_gib(), "peak_reserved_gib": peak_reserved_gib()}
    table([(k, v) for k, v in result.items() if k != "env"])
    write_json("batching" + ("_tiny_cpu" if args.tiny else ""), result)


if __name__ == "__main__":
    main()
