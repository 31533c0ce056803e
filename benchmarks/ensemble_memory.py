"""Host memory of an ensemble: the up-front estimate against the measured peak (analytic prior, CPU).

Each case runs in a fresh process. The peak is the process's largest resident set (``ru_maxrss``)
after the run, less the one after the single ``restore`` of the same image with the same settings
(run first in that process, so torch's lazy setup, the model and the restore's own arrays are in
the baseline): what the ensemble allocates beyond its restore, which is what
``napari_treg.engine.ensemble.ensemble_host_bytes`` estimates and the memory guard checks.

    python benchmarks/ensemble_memory.py                  # the table of docs/reliability.md
    python benchmarks/ensemble_memory.py --size 512 --samples 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = {
    "kept": dict(keep_samples=True),
    "streamed": dict(keep_samples=False),
    "tiled, kept": dict(keep_samples=True, tile_size=128, tile_overlap=16),
    "tiled, streamed": dict(keep_samples=False, tile_size=128, tile_overlap=16),
}


def measure(case: str, size: int, samples: int) -> dict:
    """Run one case here (called in a child process): the estimate and the measured peak, in MiB."""
    import resource

    import numpy as np
    import torch

    from napari_treg import restore
    from napari_treg.api import ensemble
    from napari_treg.engine.ensemble import EnsembleSettings, ensemble_host_bytes
    from napari_treg.engine.restorer import RunSettings, prepare
    from napari_treg.operators import GaussianBlur

    torch.set_num_threads(1)
    image = np.random.default_rng(0).random((size, size)).astype(np.float32)
    options = dict(CASES[case])
    keep = options.pop("keep_samples")
    settings = dict(model="analytic", device="cpu", steps=3, seed=1, noise=0.05, **options)
    restore(image, GaussianBlur(1.0), **{k: v for k, v in settings.items() if k != "noise"})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = ensemble(image, GaussianBlur(1.0), samples=samples, keep_samples=keep, **settings)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    run = prepare(image, GaussianBlur(1.0), RunSettings(**{k: v for k, v in options.items()}))
    estimate = ensemble_host_bytes(run, EnsembleSettings(samples=samples, keep_samples=keep))
    assert np.isfinite(result.mean).all()
    return {"case": case, "estimate_mib": estimate / 2**20, "measured_mib": (peak - before) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--samples", type=int, default=32, help="samples of each ensemble (default 32)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.size, args.samples)))
        return
    print(f"{args.size}x{args.size} grey, {args.samples} samples, GaussianBlur(1.0), 3 steps, analytic prior")
    print(f"{'case':<18}{'estimate MiB':>14}{'measured MiB':>14}{'measured/estimate':>19}")
    for case in CASES:
        command = [sys.executable, __file__, "--size", str(args.size), "--samples", str(args.samples), "--child", case]
        output = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ).stdout
        row = json.loads(output.strip().splitlines()[-1])
        ratio = row["measured_mib"] / row["estimate_mib"]
        print(f"{case:<18}{row['estimate_mib']:>14.1f}{row['measured_mib']:>14.1f}{ratio:>19.2f}")


if __name__ == "__main__":
    main()
