"""GPU memory paths that never ran on a GPU (issue 15), under an 8 GiB cap.

Random full-size SD 1.5 in fp16 (benchmarks/sd15_random.py). The process is capped with
torch.cuda.set_per_process_memory_fraction (an 8 GB consumer GPU). Every recording attempt of
a CUDA graph is counted (a counting wrapper around the project's recorder: input shapes, ok or
the error, seconds, memory allocated before and after). Sections (--sections):

- ``reference``: 512x512 default mode (graphed), the result later sections are compared to.
- ``policy``: 1024x1024 untiled in the default mode: recording attempts and failures, whether
  the cache went "memory short" (then every new call runs eagerly), the RuntimeWarning, the
  time of the first solve and of a second one (eager after "memory short"), peak memory.
- ``leak``: memory allocated / reserved before that 1024 section, after it, and after dropping
  the graphs (``prior.graphs.clear()``) and emptying the cache; with torch's memory history on,
  the blocks still allocated that were not there before, grouped by where they were allocated
  (the 0.82 GiB not returned in docs/performance.md).
- ``low_memory``: 1024x1024 untiled in the low-memory mode, first and second solve.
- ``forced``: 512x512 with a ballast tensor leaving only --headrooms GiB above the weights:
  does the solve finish, does the cache go "memory short", what is left allocated afterwards.
- ``compile``: ``prior.compile()`` as ``load_model(..., compile=True)`` runs it (inductor's
  ``reduce-overhead`` mode, its own CUDA graphs): first solve (compiles), second solve, peak
  memory, difference from the graphed reference. Last: it changes the modules for good.

    python benchmarks/gpu_memory_paths.py [--steps 20] [--cap-gib 8] [--sections reference,policy,...]
    python benchmarks/gpu_memory_paths.py --smoke     # the tiny model on the CPU (code paths only)

Prints a table and writes $OUT/<--name>.json (default gpu_memory_paths.json) when OUT is set, also
after each section (so a run stopped by a time limit keeps what it measured).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import traceback
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import build_sd15_prior, environment, peak_gib, peak_reserved_gib, reset_peak, sync, table, write_json  # noqa: E402

SECTIONS = ("reference", "policy", "leak", "low_memory", "forced", "compile")
GIB = 2**30


def memory_now() -> dict:
    if not torch.cuda.is_available():
        return {"allocated_gib": None, "reserved_gib": None}
    return {
        "allocated_gib": round(torch.cuda.memory_allocated() / GIB, 3),
        "reserved_gib": round(torch.cuda.memory_reserved() / GIB, 3),
    }


class CountingRecorder:
    """Wraps a graph recorder: one entry per recording attempt (shapes, ok / error, seconds, memory)."""

    def __init__(self, record: Callable):
        self.record = record
        self.attempts: list[dict] = []

    def __call__(self, fn, inputs, pool):
        entry: dict[str, Any] = {"shapes": [list(t.shape) for t in inputs], "before": memory_now()}
        start = time.perf_counter()
        try:
            replay = self.record(fn, inputs, pool)
            entry["ok"] = True
            return replay
        except Exception as error:
            entry["ok"] = False
            entry["error"] = f"{type(error).__name__}: {str(error)[:160]}"
            raise
        finally:
            entry["seconds"] = round(time.perf_counter() - start, 3)
            entry["after"] = memory_now()
            self.attempts.append(entry)

    def summary(self) -> dict:
        failed = [a for a in self.attempts if not a["ok"]]
        return {
            "attempts": len(self.attempts),
            "failed": len(failed),
            "recording_s": round(sum(a["seconds"] for a in self.attempts), 2),
            "failures": failed[:6],
        }


def fresh_graphs(prior) -> CountingRecorder:
    """A new, empty graph cache for the prior whose recordings are counted."""
    from napari_treg.models.cuda_graphs import GraphCache, record_cuda_graph

    recorder = CountingRecorder(record_cuda_graph)
    prior.graphs = GraphCache(capture=recorder)
    return recorder


def solve(prior, size: int, steps: int) -> tuple[dict, np.ndarray | None]:
    """One restore (x16 SR to ``size``); time, peak, warnings, or the error it ended with."""
    from napari_treg import restore
    from napari_treg.operators import SuperResolution

    y = np.random.default_rng(0).uniform(0, 1, (size // 16, size // 16, 3)).astype(np.float32)
    reset_peak()
    row: dict[str, Any] = {}
    image = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        try:
            image = restore(y, SuperResolution(16), model=prior, steps=steps, prompt="a photograph", seed=0)
            sync()
        except Exception as error:  # noqa: BLE001 - running out of memory is a result here
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        row["seconds"] = round(time.perf_counter() - start, 2)
    row.update(
        peak_gib=peak_gib(),
        peak_reserved_gib=peak_reserved_gib(),
        graphs=len(prior.graphs),
        memory_short=prior.graphs.memory_short,
        warnings=sorted({str(w.message)[:240] for w in caught if issubclass(w.category, RuntimeWarning)}),
    )
    return row, image


def difference(image: np.ndarray | None, reference: np.ndarray | None) -> dict:
    if image is None or reference is None:
        return {}
    diff = image.astype(np.float64) - reference.astype(np.float64)
    return {"max_abs_vs_graphed": float(np.abs(diff).max()), "rms_vs_graphed": float(np.sqrt(np.mean(diff**2)))}


def release_all(prior) -> dict:
    """Drop the graphs, collect garbage, empty the cache; the memory left."""
    prior.graphs.clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return memory_now()


# -- where memory that stays allocated came from ----------------------------------------------


def start_history() -> bool:
    history = getattr(torch.cuda.memory, "_record_memory_history", None)
    if history is None or not torch.cuda.is_available():
        return False
    try:
        history(max_entries=200_000, stacks="python")
    except (RuntimeError, TypeError) as error:  # an older torch: no python-only stacks
        print(f"memory history not recorded: {error}")
        return False
    return True


def active_blocks() -> dict[int, dict]:
    """Allocated blocks by address (with their allocation frames when the history is on)."""
    snapshot = torch.cuda.memory._snapshot()
    blocks = {}
    for segment in snapshot.get("segments", []):
        address = segment["address"]
        for block in segment.get("blocks", []):
            address = block.get("address", address)  # blocks follow each other within their segment
            if block.get("state") == "active_allocated":
                blocks[address] = {**block, "pool": str(segment.get("segment_pool_id"))}
            address += block["size"]
    return blocks


def where_allocated(block: dict) -> str:
    """The innermost frames of this project, diffusers or the benchmark that allocated ``block``."""
    frames = block.get("frames") or []
    keep = [f for f in frames if any(k in f.get("filename", "") for k in ("napari_treg", "diffusers", "benchmarks"))]
    return " <- ".join(f"{Path(f['filename']).name}:{f.get('line')} {f.get('name')}" for f in keep[:3]) or "unknown"


def surviving(before: dict[int, dict], after: dict[int, dict], traced: dict[int, dict], top: int = 8) -> list[dict]:
    """Blocks allocated ``after`` that were not ``before``, summed by allocation site (from ``traced``) and pool."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for address, block in after.items():
        if address not in before:
            group = groups[(where_allocated(traced.get(address, block)), block["pool"])]
            group[0] += block["size"]
            group[1] += 1
    rows = [
        {"gib": round(size / GIB, 3), "blocks": count, "pool": pool, "site": site}
        for (site, pool), (size, count) in groups.items()
    ]
    return sorted(rows, key=lambda r: -r["gib"])[:top]


# -- sections ---------------------------------------------------------------------------------


def section_reference(prior, args, state: dict) -> dict:
    recorder = fresh_graphs(prior)
    solve(prior, args.size, 3)  # warm-up: cuDNN / cuBLAS workspaces
    row, state["reference"] = solve(prior, args.size, args.steps)
    return {**row, "recording": recorder.summary()}


def section_policy(prior, args, state: dict) -> dict:
    """The 1024 default-mode solve twice; with ``leak``, also what memory it leaves behind.

    Torch's memory history (allocation sites) is on during the first solve only, where the
    recordings fail, so that it does not slow the second, timed one.
    """
    before_memory = release_all(prior)
    tracking = "leak" in args.sections and start_history()
    before_blocks = active_blocks() if tracking else {}
    recorder = fresh_graphs(prior)
    first, _ = solve(prior, args.large, args.steps)
    traced = active_blocks() if tracking else {}
    if tracking:
        torch.cuda.memory._record_memory_history(enabled=None)
    second, _ = solve(prior, args.large, args.steps)
    result = {
        "first_solve": first,
        "second_solve": second,
        "recording": recorder.summary(),
        "memory_before": before_memory,
        "memory_after_solves": memory_now(),
    }
    result["memory_after_release"] = release_all(prior)
    if tracking:
        result["surviving_blocks"] = surviving(before_blocks, active_blocks(), traced)
    if before_memory["allocated_gib"] is not None:
        result["not_returned_gib"] = round(
            result["memory_after_release"]["allocated_gib"] - before_memory["allocated_gib"], 3
        )
    state["policy"] = result
    return result


def section_leak(prior, args, state: dict) -> dict:
    if "policy" not in state:
        return {"skipped": "runs with the policy section (it measures memory around it)"}
    keys = ("memory_before", "memory_after_solves", "memory_after_release", "not_returned_gib", "surviving_blocks")
    return {key: state["policy"].get(key) for key in keys}


def section_low_memory(prior, args, state: dict) -> dict:
    prior.set_low_memory(True)
    recorder = fresh_graphs(prior)
    try:
        first, _ = solve(prior, args.large, args.steps)
        second, _ = solve(prior, args.large, args.steps)
    finally:
        prior.set_low_memory(False)
    result = {"first_solve": first, "second_solve": second, "recording": recorder.summary()}
    default = state.get("policy", {}).get("second_solve", {}).get("seconds")
    if default and second.get("seconds"):
        result["default_over_low_memory"] = round(default / second["seconds"], 2)
    result["memory_after_release"] = release_all(prior)
    return result


def section_forced(prior, args, state: dict) -> dict:
    """512 solves with a ballast that leaves only ``headroom`` GiB above what is allocated now."""
    rows = {}
    for headroom in (float(h) for h in args.headrooms.split(",")):
        base = release_all(prior)
        ballast = None
        if torch.cuda.is_available():
            limit = args.cap_gib * GIB
            spare = limit - torch.cuda.memory_allocated() - headroom * GIB
            if spare > 0:
                ballast = torch.empty(int(spare), dtype=torch.uint8, device="cuda")
        recorder = fresh_graphs(prior)
        row, image = solve(prior, args.size, args.forced_steps)
        row["recording"] = recorder.summary()
        del ballast
        row["memory_after_release"] = release_all(prior)
        if base["allocated_gib"] is not None:
            row["not_returned_gib"] = round(row["memory_after_release"]["allocated_gib"] - base["allocated_gib"], 3)
        rows[f"headroom_{headroom:g}_gib"] = row
    return rows


def section_compile(prior, args, state: dict) -> dict:
    release_all(prior)
    start = time.perf_counter()
    prior.compile()  # what load_model(..., compile=True) calls
    result: dict[str, Any] = {"compile_call_s": round(time.perf_counter() - start, 2)}
    first, _ = solve(prior, args.size, args.steps)
    second, image = solve(prior, args.size, args.steps)
    result.update(first_solve=first, second_solve=second, **difference(image, state.get("reference")))
    reference = state.get("reference_row", {}).get("seconds")
    if reference and second.get("seconds"):
        result["over_graphed"] = round(second["seconds"] / reference, 3)
    return result


RUN = {
    "reference": section_reference,
    "policy": section_policy,
    "leak": section_leak,
    "low_memory": section_low_memory,
    "forced": section_forced,
    "compile": section_compile,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--forced-steps", type=int, default=10)
    ap.add_argument("--cap-gib", type=float, default=8.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--large", type=int, default=1024)
    ap.add_argument("--headrooms", default="1.0,1.5,2.0", help="GiB left above the weights in the forced section")
    ap.add_argument("--sections", default=",".join(SECTIONS))
    ap.add_argument("--smoke", action="store_true", help="the tiny model on the CPU: the code paths, no GPU memory")
    ap.add_argument("--name", default="gpu_memory_paths", help="of the output file, $OUT/<name>.json")
    args = ap.parse_args()
    args.sections = [s for s in args.sections.split(",") if s]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    result: dict[str, Any] = {"env": environment(), "steps": args.steps, "cap_gib": args.cap_gib}
    if args.smoke:
        from napari_treg.models import load_model

        torch.set_num_threads(1)
        args.size, args.large, args.steps, args.forced_steps = 32, 64, min(args.steps, 3), 2
        result["steps"] = args.steps
        prior = load_model("tiny", device="cpu")
        result["note"] = "CPU smoke run: the code paths only (no CUDA graphs, no GPU memory)"
    else:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total))
        prior = build_sd15_prior("cuda", torch.float16)
        result["weights_gib"] = round(torch.cuda.memory_allocated() / GIB, 3)
    state: dict[str, Any] = {}
    for name in args.sections:
        start = time.perf_counter()
        try:
            result[name] = RUN[name](prior, args, state)
        except Exception:  # noqa: BLE001 - keep what the other sections measure
            result[name] = {"error": traceback.format_exc()[-2500:]}
        if name == "reference":
            state["reference_row"] = result[name]
        print(f"== {name}: {time.perf_counter() - start:.1f} s", flush=True)
        write_json(output_name(args), result, echo=False)  # what a time limit would otherwise lose
    table([(k, v) for k, v in result.items() if k != "env"])
    write_json(output_name(args), result)


def output_name(args) -> str:
    return ("smoke_" if args.smoke else "") + args.name


if __name__ == "__main__":
    main()
