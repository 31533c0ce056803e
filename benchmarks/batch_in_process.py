"""What the batch dock's in-process fallback costs: a worker thread in this process vs worker processes.

The fallback (``napari_treg.batch.cluster.in_process_cluster``) is used when worker processes
cannot start, e.g. from a napari script without an ``if __name__ == "__main__":`` guard. Here the
guard check is replaced by one that says "unguarded" for the fallback's run, so both runs take the
path the batch dock takes (``restore_many`` starting its own local cluster, one torch thread per
unit). Analytic prior, Gaussian blur, a NumPy stack. Each time includes starting the cluster (and,
for processes, importing torch in each worker); this process has imported everything before.

    python benchmarks/batch_in_process.py [--units 8] [--steps 50] [--size 128] [--workers 2]

Prints one JSON object. On a shared machine other jobs disturb the numbers: rerun and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def timed_run(stack: np.ndarray, steps: int, workers: int, output: str) -> tuple[float, str | None]:
    from napari_treg.batch import restore_many
    from napari_treg.operators import GaussianBlur

    settings = {"model": "analytic", "device": "cpu", "steps": steps, "seed": 0}
    start = time.perf_counter()
    report = restore_many(stack, output, GaussianBlur(2.0), workers=workers, **settings)
    seconds = time.perf_counter() - start
    assert report.ok and report.computed == len(stack), report
    return seconds, report.note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import torch

    from napari_treg.batch import cluster
    from napari_treg.engine.restorer import Restorer  # noqa: F401 - imported before, as in napari

    stack = np.random.default_rng(0).random((args.units, args.size, args.size)).astype(np.float32)
    folder = tempfile.mkdtemp(prefix="batch_in_process_")
    threads = torch.get_num_threads()
    results: dict = {"units": args.units, "steps": args.steps, "size": args.size, "cpu_count": os.cpu_count()}
    seconds, _ = timed_run(stack, args.steps, args.workers, os.path.join(folder, "processes.zarr"))
    results[f"processes_{args.workers}_workers_s"] = seconds
    guard_check = cluster.unguarded_script
    cluster.unguarded_script = lambda: "script.py"  # as from a script without a main guard
    try:
        seconds, note = timed_run(stack, args.steps, args.workers, os.path.join(folder, "thread.zarr"))
    finally:
        cluster.unguarded_script = guard_check
    results["in_process_thread_s"] = seconds
    results["note"] = note
    results["torch_threads_kept"] = torch.get_num_threads() == threads
    for key in [key for key in results if key.endswith("_s")]:
        results[key.replace("_s", "_per_unit_s")] = round(results[key] / args.units, 3)
        results[key] = round(results[key], 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
