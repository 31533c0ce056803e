"""Scale-out throughput: units per second with 1 and 2 dask workers, and the distributed path's overhead.

Analytic prior, 128x128 planes, 50 steps, Gaussian blur; one torch thread everywhere.
- local loop: ``restore`` of each plane in this process (what a worker does, minus dask);
- 1 and 2 workers: ``restore_many`` of a zarr stack on the embedded cluster
  (``napari_treg.batch.cluster.local_cluster``) with that many worker processes, after a warm-up run (workers import torch and load the model once);
- overhead per unit = (1-worker time - local loop time) / units: scheduling, serialisation,
  reading and writing zarr chunks and records, and any slowdown of the solve inside a worker;
- path overhead per unit = (1-worker time - the solves' time as the worker timed them) / units:
  the distributed path alone.

    python benchmarks/scale_out.py [--units 16] [--steps 50] [--size 128]
    python benchmarks/scale_out.py --worker-env   # one solve: plain process vs dask worker settings

Prints one JSON object. On a shared machine other jobs disturb the numbers: run it on an
otherwise idle machine, or rerun and compare.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--worker-env", action="store_true", help="time one solve under each worker setting")
    args = parser.parse_args()
    if args.worker_env:
        print(json.dumps(worker_env(args.size, args.steps), indent=1))
        return

    import torch
    import zarr
    from distributed import Client

    from napari_treg import restore
    from napari_treg.batch import restore_many
    from napari_treg.batch.cluster import local_cluster
    from napari_treg.imaging.layout import IntensityScale
    from napari_treg.operators import GaussianBlur

    torch.set_num_threads(1)
    operator, settings = GaussianBlur(2.0), {"model": "analytic", "device": "cpu", "steps": args.steps, "seed": 0}
    stack = (np.random.default_rng(0).random((args.units, args.size, args.size)) * 1000).astype(np.uint16)
    scale = IntensityScale.from_data(stack.astype(np.float32))
    folder = tempfile.mkdtemp(prefix="scale_out_")
    source = zarr.create_array(
        os.path.join(folder, "in.zarr"), shape=stack.shape, chunks=(1, args.size, args.size), dtype=stack.dtype
    )
    source[:] = stack
    warm_source = zarr.create_array(
        os.path.join(folder, "warm.zarr"),
        shape=(4, args.size, args.size),
        chunks=(1, args.size, args.size),
        dtype=stack.dtype,
    )
    warm_source[:] = stack[:4]

    restore(stack[0], operator, **settings)  # warm-up: imports, model
    started = time.perf_counter()
    for k, plane in enumerate(stack):
        restore(plane, operator, intensity_range=(scale.low, scale.high), **{**settings, "seed": k})
    local = time.perf_counter() - started

    results = {"units": args.units, "size": args.size, "steps": args.steps, "local_loop_s": local}
    for workers in (1, 2):
        with local_cluster(workers) as cluster:
            with Client(cluster) as client:
                # warm-up: every worker imports torch and loads the model before the timed run
                restore_many(
                    os.path.join(folder, "warm.zarr"),
                    os.path.join(folder, f"warm{workers}.out.zarr"),
                    operator,
                    client=client,
                    **settings,
                )
                started = time.perf_counter()
                report = restore_many(
                    os.path.join(folder, "in.zarr"),
                    os.path.join(folder, f"out{workers}.zarr"),
                    operator,
                    client=client,
                    **settings,
                )
                seconds = time.perf_counter() - started
        assert report.ok, report.failed
        results[f"workers_{workers}_s"] = seconds
        results[f"workers_{workers}_solves_s"] = sum(record["seconds"] for record in report.records)
        results[f"workers_{workers}_units_per_s"] = args.units / seconds
    results["speedup_2_over_1"] = results["workers_2_units_per_s"] / results["workers_1_units_per_s"]
    results["overhead_ms_per_unit"] = 1000 * (results["workers_1_s"] - local) / args.units
    # the dask path alone: 1-worker wall time minus the solves' own time inside the worker
    results["path_overhead_ms_per_unit"] = 1000 * (results["workers_1_s"] - results["workers_1_solves_s"]) / args.units
    results["local_units_per_s"] = args.units / local
    results["load_average"] = os.getloadavg()
    print(json.dumps(results, indent=1))


def one_solve(size: int, steps: int) -> float:
    """Seconds of one analytic solve (after a short warm-up), in whatever process runs it."""
    import torch

    from napari_treg import restore
    from napari_treg.operators import GaussianBlur

    torch.set_num_threads(1)
    plane = (np.random.default_rng(0).random((size, size)) * 1000).astype(np.uint16)
    restore(plane, GaussianBlur(2.0), model="analytic", device="cpu", steps=5)
    started = time.perf_counter()
    restore(plane, GaussianBlur(2.0), model="analytic", device="cpu", steps=steps)
    return time.perf_counter() - started


def worker_env(size: int, steps: int) -> dict:
    """One solve in this process and in a 1-worker LocalCluster under dask's defaults and under WORKER_CONFIG."""
    import dask
    from distributed import Client, LocalCluster

    from napari_treg.batch.cluster import WORKER_CONFIG

    results = {"plain_process_s": one_solve(size, steps)}
    profile_only = {"distributed.worker.profile.enabled": False}
    trim_only = {"distributed.nanny.pre-spawn-environ": WORKER_CONFIG["distributed.nanny.pre-spawn-environ"]}
    variants = {
        "dask_defaults": {},
        "no_profiler": profile_only,
        "no_malloc_trim": trim_only,
        "worker_config": WORKER_CONFIG,
    }
    for name, config in variants.items():
        with (
            dask.config.set(config),
            LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster,
        ):
            with Client(cluster) as client:
                results[f"{name}_s"] = [client.submit(one_solve, size, steps, pure=False).result() for _ in range(2)]
    results["plain_process_again_s"] = one_solve(size, steps)
    results["load_average"] = os.getloadavg()
    return results


if __name__ == "__main__":
    main()
