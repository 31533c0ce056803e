"""Tiled restore: time against the number of tiles (should be linear), memory flat.

GPU (default): random full-size SD 1.5, fp16, denoising of grey images of 512, 1024,
1536 and 2048 pixels in 512-pixel tiles overlapping by 64 (1, 9, 16 and 25 tiles... see
the output), --steps 20, --batch-size 1. --tiny: the tiny test model on the CPU (for the
code path and the Python overhead; its networks are ~1000x cheaper than SD's).

    python benchmarks/tiling.py [--tiny] [--sizes 512,1024,2048] [--tile 512] [--overlap 64] [--steps 20]

Reports seconds, seconds per tile, peak GPU memory (GPU) or peak resident memory (CPU).
Writes $OUT/tiling[_tiny_cpu].json when OUT is set.
"""

from __future__ import annotations

import argparse
import resource
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
    ap.add_argument("--sizes", default="512,1024,1536,2048")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_treg import restore
    from napari_treg.engine.tiling import Tiling
    from napari_treg.operators import Denoising

    if args.tiny:
        from napari_treg.models import load_model

        prior = load_model("tiny", device="cpu")
    else:
        prior = build_sd15_prior("cuda", torch.float16)
    kwargs = dict(
        model=prior,
        steps=args.steps,
        tile_size=args.tile,
        tile_overlap=args.overlap,
        batch_size=args.batch_size,
        prompt="a photograph",
    )
    rng = np.random.default_rng(0)
    warm = rng.uniform(0, 1, (args.tile, args.tile)).astype(np.float32)
    restore(warm, Denoising(), **{**kwargs, "steps": 2})  # warm-up: records the CUDA graphs of a tile
    result = {
        "env": environment(),
        "model": prior.name,
        "tile": args.tile,
        "overlap": args.overlap,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "runs": [],
    }
    for size in (int(s) for s in args.sizes.split(",")):
        image = rng.uniform(0, 1, (size, size)).astype(np.float32)
        tiles = Tiling.plan(Denoising(), image.shape, args.tile, args.overlap).count
        reset_peak()
        sync()
        start = time.perf_counter()
        out = restore(image, Denoising(), **kwargs)
        sync()
        seconds = time.perf_counter() - start
        assert out.shape == image.shape and np.isfinite(out).all()
        result["runs"].append(
            {
                "size": size,
                "tiles": tiles,
                "seconds": round(seconds, 3),
                "s_per_tile": round(seconds / tiles, 4),
                "peak_gib": peak_gib(),
                "peak_reserved_gib": peak_reserved_gib(),
                "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            }
        )
        print(result["runs"][-1], flush=True)
    table([(f"{r['size']}x{r['size']}", r) for r in result["runs"]])
    write_json("tiling" + ("_tiny_cpu" if args.tiny else ""), result)


if __name__ == "__main__":
    main()
