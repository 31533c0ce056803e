"""GPU benchmark: one 512x512 TReg ``restore`` at the reference schedule vs its model calls.

Random full-size SD 1.5 (benchmarks/sd15_random.py), fp16, x16 super-resolution of a
32x32 measurement to 512x512, 200 steps, 57 data-consistency steps, CFG 5, adaptive
negation on. Measures, in one process:

- restore's wall time with CUDA graphs (the default): the first solve (which records the
  graphs) and the median of --reps solves after it; peak GPU memory (allocated and reserved);
- the host synchronisations inside the sampler loop (torch.cuda sync debug mode, counted
  between the first and the last step);
- the same solve with CUDA graphs off (eager), and how far its result is from the graphed one;
- each model call eager and graphed, at the solve's shapes.

With --baselines (default) it then runs benchmarks/baselines/graph_floor.py and treg_floor.py
in the same run and reports the issue's ratios:

    restore / graphed-calls floor   (target <= 1.1)
    eager reference loop / restore  (target >= 2.5)
    peak memory                     (target <= 4 GiB)

    python benchmarks/gpu_solve.py [--compile] [--low-memory] [--steps 200] [--reps 2]

Prints a table and writes $OUT/gpu_solve[_compile|_lowmem].json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import (  # noqa: E402
    build_sd15_prior,
    environment,
    instrument,
    peak_gib,
    peak_reserved_gib,
    reset_peak,
    sync,
    table,
    timed,
    write_json,
)

HERE = Path(__file__).resolve().parent


def primitives(prior, reps: int = 10) -> dict:
    """Median time of each model call at the solve's shapes (512x512, CFG batch 2), as the prior runs it."""
    dev = prior.device
    z = torch.randn(2, 4, 64, 64, device=dev)
    text = torch.randn(2, 77, 768, device=dev)
    x = torch.rand(1, 3, 512, 512, device=dev) * 2 - 1
    out = {}
    with torch.no_grad():
        out["unet_cfg_b2"] = timed(lambda: prior.predict_noise(z, 500, text), reps, warm=3)[0]
        out["vae_decode"] = timed(lambda: prior.decode(z[:1]), reps, warm=3)[0]
        out["vae_encode"] = timed(lambda: prior.encode(x), reps, warm=3)[0]
        out["clip_image"] = timed(lambda: prior.embed_image(x), reps, warm=3)[0]
    return {k: round(v, 5) for k, v in out.items()}


def count_loop_syncs(restore_call) -> int:
    """Host synchronisations between the end of the first and the end of the last sampler step."""

    def progress(done, total, preview=None):
        if done == 1:
            torch.cuda.set_sync_debug_mode("warn")
        if done == total:
            torch.cuda.set_sync_debug_mode(0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            restore_call(progress)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("called a synchronizing CUDA operation" in str(w.message) for w in caught)


def run_baseline(script: str, *args: str) -> dict:
    path = HERE / "baselines" / script
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=400)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    text = done.stdout
    result = json.loads(text[text.index("{") :])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA graphs)")
    ap.add_argument("--low-memory", action="store_true", help="sliced attention, VAE slicing/tiling, text on CPU")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="check the script on the CPU with the tiny model")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    if args.smoke:
        from napari_treg.models import load_model

        device, dtype, args.no_baselines, args.dtype = "cpu", torch.float32, True, "float32"
        prior = load_model("tiny", device="cpu")
    else:
        prior = build_sd15_prior(device, dtype)
    build_s = time.perf_counter() - start
    if args.low_memory:
        prior.set_low_memory(True)
    result = {
        "env": environment(),
        "dtype": args.dtype,
        "steps": args.steps,
        "compile": args.compile,
        "low_memory": args.low_memory,
        "build_s": round(build_s, 1),
        "attention": sorted({type(p).__name__ for p in prior.unet.attn_processors.values()}),
    }
    result["primitives_s"] = {}
    if args.smoke:
        args.steps = min(args.steps, 6)
        result["steps"] = args.steps
    if args.compile:
        prior.compile()

    try:
        measure(prior, args, device, result)
    except Exception:  # noqa: BLE001 - keep what was measured, and still run the baselines
        result["error"] = traceback.format_exc()[-3000:]
    if not args.no_baselines and device == "cuda":
        prior.release()
        del prior
        torch.cuda.empty_cache()
        run_baselines(args, result)

    name = (
        ("smoke_" if args.smoke else "")
        + "gpu_solve"
        + ("_compile" if args.compile else "")
        + ("_lowmem" if args.low_memory else "")
    )
    table([(k, v) for k, v in result.items() if not isinstance(v, dict)])
    write_json(name, result)


def measure(prior, args, device: str, result: dict) -> None:
    from napari_treg import restore
    from napari_treg.operators import SuperResolution

    y = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)  # -> 512x512
    op = SuperResolution(16)
    kwargs = dict(model=prior, steps=args.steps, prompt="a photograph", seed=0)  # reference defaults otherwise
    reset_peak()
    start = time.perf_counter()
    restore(y, op, **kwargs)  # warm-up: records the CUDA graphs (or compiles)
    sync()
    result["first_solve_s"] = round(time.perf_counter() - start, 3)
    reset_peak()
    stats = instrument(prior)
    solve_s, (graphed, info) = timed(lambda: restore(y, op, return_info=True, **kwargs), reps=args.reps)
    result["restore_s"] = round(solve_s, 3)
    result["peak_gib"] = peak_gib()
    result["peak_reserved_gib"] = peak_reserved_gib()
    result["calls_per_solve"] = {k: v[0] // args.reps for k, v in stats.items()}
    result["residual"] = info["residual"]
    result["graphs_recorded"] = len(prior.graphs)
    if device == "cuda":
        result["syncs_in_loop"] = count_loop_syncs(lambda progress: restore(y, op, progress=progress, **kwargs))
        result["primitives_s"] = primitives(prior)
        if not args.compile:
            prior.cuda_graphs = False
            result["primitives_eager_s"] = primitives(prior)
            eager_s, eager = timed(lambda: restore(y, op, **kwargs), reps=1)
            result["restore_eager_s"] = round(eager_s, 3)
            result["graphs_speedup"] = round(eager_s / solve_s, 3)
            result["graphed_vs_eager_max_abs"] = float(np.abs(graphed - eager).max())
            result["graphed_vs_eager_rms"] = float(np.sqrt(np.mean((graphed - eager) ** 2)))
            result["result_range"] = [float(graphed.min()), float(graphed.max())]
            prior.cuda_graphs = True
    p = result["primitives_s"]
    if p:
        c = result["calls_per_solve"]
        result["calls_s"] = round(
            c["predict_noise"] * p["unet_cfg_b2"]
            + c["decode"] * p["vae_decode"]
            + c["encode"] * p["vae_encode"]
            + c["embed_image"] * p["clip_image"],
            3,
        )
        result["restore_over_calls"] = round(solve_s / result["calls_s"], 3)


def run_baselines(args, result: dict) -> None:
    solve_s = result.get("restore_s")
    graph = run_baseline("graph_floor.py")
    ref = run_baseline("treg_floor.py", "--steps", str(args.steps))
    result["baseline_graph_floor"] = graph
    result["baseline_treg_floor"] = ref
    if solve_s and "graph_floor_s" in graph:
        result["restore_over_graph_floor"] = round(solve_s / graph["graph_floor_s"], 3)  # target <= 1.1
    if solve_s and "reference_loop_s" in ref:
        result["speedup_over_eager_reference"] = round(ref["reference_loop_s"] / solve_s, 3)  # target >= 2.5


if __name__ == "__main__":
    main()
