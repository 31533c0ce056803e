"""The sampler's own cost over its model calls (CPU), with the analytic prior.

A 200-step 64x64 TReg solve (x4 super-resolution of a 16x16 measurement, CFG 5,
adaptive negation on, 57 data-consistency steps with 5 CG iterations each) through
``napari_treg.restore``. Every model call of the prior is timed (on the CPU calls are
synchronous, so wall time inside them is their cost); the rest is the sampler's and
the API's overhead: DDIM updates, CG, Adam steps, callbacks, I/O conversion.

    python benchmarks/cpu_overhead.py [--steps 200] [--size 64] [--reps 3] [--model analytic|tiny]

Writes $OUT/cpu_overhead.json when OUT is set.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import environment, instrument, table, write_json  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--model", default="analytic")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from napari_treg import restore
    from napari_treg.models import load_model
    from napari_treg.operators import SuperResolution

    prior = load_model(args.model, device="cpu")
    y = np.random.default_rng(0).uniform(0, 1, (args.size // 4, args.size // 4)).astype(np.float32)
    kwargs = dict(model=prior, steps=args.steps, prompt="a disk", seed=0)
    restore(y, SuperResolution(4), **{**kwargs, "steps": 5})  # warm-up
    stats = instrument(prior)
    totals, in_calls = [], []
    for _ in range(args.reps):
        before = sum(v[1] for v in stats.values())
        start = time.perf_counter()
        restore(y, SuperResolution(4), **kwargs)
        totals.append(time.perf_counter() - start)
        in_calls.append(sum(v[1] for v in stats.values()) - before)
    overhead = [t - c for t, c in zip(totals, in_calls)]
    result = {
        "env": environment(),
        "model": prior.name,
        "size": args.size,
        "steps": args.steps,
        "torch_threads": torch.get_num_threads(),
        "restore_s": round(statistics.median(totals), 4),
        "model_calls_s": round(statistics.median(in_calls), 4),
        "overhead_s": round(statistics.median(overhead), 4),
        "overhead_ms_per_step": round(1000 * statistics.median(overhead) / args.steps, 3),
        "calls_per_solve": {k: v[0] // args.reps for k, v in stats.items()},
        "call_seconds_per_solve": {k: round(v[1] / args.reps, 4) for k, v in stats.items()},
    }
    table([(k, v) for k, v in result.items() if k != "env"])
    write_json(f"cpu_overhead_{args.model}", result)


if __name__ == "__main__":
    main()
