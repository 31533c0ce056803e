"""GPU benchmark (issue 15): each speed candidate alone against today's graphed 512x512 solve.

Random full-size SD 1.5 (benchmarks/sd15_random.py), fp16, the reference schedule (200 steps,
57 data-consistency steps, CFG 5, adaptive negation), x16 super-resolution of a 32x32
measurement to 512x512, one process. First ``graph_floor.py`` (the shared baseline, copied to
benchmarks/baselines/) runs in a subprocess, then today's graphed path is measured (first
solve, median of --reps solves, one eager solve for the accuracy bar), then each candidate is
applied alone (in this order), measured the same way and undone:

- ``channels_last``: UNet and VAE weights in channels-last layout (activations follow).
- ``sdpa``: the fastest scaled-dot-product-attention backend (flash, efficient, cuDNN, math),
  picked by timing the graphed UNet and VAE calls at the solve's shapes, one pick per network.
- ``fused_dc``: decode -> conjugate gradient -> encode -> CLIP image embedding of a
  data-consistency step recorded as ONE CUDA graph instead of three graphs plus eager CG.
- ``compile`` (run first): ``torch.compile`` of the UNet and the VAE encoder / decoder, inductor's
  ``default`` mode (no autotuning, no inductor CUDA graphs), replayed inside the project's
  own CUDA graphs. Why this mode: the project's graphs already remove the launch overhead
  (restore / model calls = 1.035, docs/performance.md), so what compilation can add is kernel
  fusion; keeping one graph mechanism keeps one memory pool and the project's recording policy
  (memory short -> eager); ``reduce-overhead`` would replace them by inductor's CUDA-graph trees
  (that is what ``load_model(compile=True)`` does; gpu_memory_paths.py measures it), and
  ``max-autotune-no-cudagraphs`` tunes every GEMM / convolution for minutes (--compile-mode).
  The compile time is stated: ``compile_s`` (the first call of each network at the solve's shapes)
  plus ``extra_first_solve_s`` (the first solve's time beyond today's). Compiled
  artifacts are cached across processes in TORCHINDUCTOR_CACHE_DIR; with --mega-cache PATH the
  portable mega-cache (torch.compiler.save/load_cache_artifacts) is also written / read.
- ``fused_norm_act``: GroupNorm + SiLU fused: eager torch has no fused kernel, so this is
  inductor applied only to the ResNet blocks (regional compilation), without the attention.
- ``combined``: every candidate that paid (faster, within the accuracy bar), together.

Per candidate: first solve (recording / compiling), solve time (median of --reps), ratio to
today's graphed solve and to the graphed floor of the same run, peak memory, max and RMS
difference of the result from today's graphed result, with the bar of today's graphed path vs
eager (docs: max 0.0068 on a range of 2.1, RMS 0.0008; measured again here as ``bar``). Each
candidate prints one line ``CANDIDATE {json}``, appended to $OUT/<--name>.jsonl; the whole
result goes to $OUT/<--name>.json (default name: gpu_candidates).

    python benchmarks/gpu_candidates.py [--steps 200] [--reps 2] [--candidates channels_last,sdpa,...]
    python benchmarks/gpu_candidates.py --smoke     # the tiny model on the CPU, 32x32, 4 steps
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import build_sd15_prior, environment, peak_gib, peak_reserved_gib, reset_peak, sync  # noqa: E402

HERE = Path(__file__).resolve().parent
#: in the order they run: compiling first (its time is the least predictable), the quick ones next
CANDIDATES = ("compile", "channels_last", "sdpa", "fused_dc", "fused_norm_act", "combined")
#: today's graphed path vs eager (docs/performance.md, run 2): the accuracy bar of issue 15
BAR_MAX_ABS, BAR_RMS, BAR_RANGE = 0.0068, 0.0008, 2.1
#: a candidate pays if it is at least this much faster than today's graphed solve
PAYS_BELOW = 0.98
#: seconds a candidate needs at least (compiling ones: more), else it is skipped
MIN_SECONDS = {"compile": 120, "fused_norm_act": 90}
QUICK_SECONDS = 30


def min_seconds(name: str, kept: list[str]) -> float:
    """The budget a candidate needs; ``combined`` compiles again when it includes a compiled candidate."""
    if name == "combined":
        return QUICK_SECONDS + sum(MIN_SECONDS.get(k, 0) for k in kept)
    return MIN_SECONDS.get(name, QUICK_SECONDS)


# -- the problem and its measurement ----------------------------------------------------------


class Problem:
    """The solve every case runs: x16 SR to ``size`` pixels, same seed, ``steps`` steps."""

    def __init__(self, prior, size: int, steps: int):
        from napari_treg.operators import SuperResolution

        self.prior = prior
        self.y = np.random.default_rng(0).uniform(0, 1, (size // 16, size // 16, 3)).astype(np.float32)
        self.operator = SuperResolution(16)
        self.steps = steps

    def solve(self) -> np.ndarray:
        from napari_treg import restore

        return restore(self.y, self.operator, model=self.prior, steps=self.steps, prompt="a photograph", seed=0)


def measure(problem: Problem, reps: int) -> tuple[dict, np.ndarray]:
    """First solve (records the graphs, compiles), then the median of ``reps``; peak memory; warnings."""
    problem.prior.graphs.clear()
    reset_peak()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        problem.solve()
        sync()
        first = time.perf_counter() - start
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            result = problem.solve()
            sync()
            times.append(time.perf_counter() - start)
    row = {
        "first_solve_s": round(first, 3),
        "restore_s": round(float(np.median(times)), 3),
        "restore_all_s": [round(t, 3) for t in times],
        "peak_gib": peak_gib(),
        "peak_reserved_gib": peak_reserved_gib(),
        "graphs": len(problem.prior.graphs),
        "warnings": sorted({str(w.message)[:200] for w in caught if issubclass(w.category, RuntimeWarning)}),
    }
    return row, result


def difference(result: np.ndarray, reference: np.ndarray) -> dict:
    diff = result.astype(np.float64) - reference.astype(np.float64)
    return {
        "max_abs": float(np.abs(diff).max()),
        "rms": float(np.sqrt(np.mean(diff**2))),
        "range": [float(reference.min()), float(reference.max())],
    }


def within_bar(diff: dict, bar: dict) -> bool:
    """As close to today's graphed result as today's graphed result is to eager (scaled by the range)."""
    scale = (diff["range"][1] - diff["range"][0]) / BAR_RANGE
    max_bar = max(bar.get("max_abs", 0.0), BAR_MAX_ABS * scale)
    rms_bar = max(bar.get("rms", 0.0), BAR_RMS * scale)
    return diff["max_abs"] <= max_bar and diff["rms"] <= rms_bar


# -- helpers to apply a candidate from outside and undo it ------------------------------------


def swap_submodules(
    root: torch.nn.Module, match: Callable[[torch.nn.Module], bool], make: Callable[[torch.nn.Module], torch.nn.Module]
) -> Callable[[], None]:
    """Replace each submodule of ``root`` for which ``match`` holds by ``make(it)``; returns the undo."""
    swapped = []
    for name, module in list(root.named_modules()):
        if name and match(module):
            parent_name, _, attr = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            setattr(parent, attr, make(module))
            swapped.append((parent, attr, module))

    def undo() -> None:
        for parent, attr, module in swapped:
            setattr(parent, attr, module)

    return undo


def eager_capture(fn, inputs, pool):
    """A stand-in for ``record_cuda_graph`` on the CPU (smoke runs): replays by calling ``fn``."""
    return lambda new_inputs: fn(*new_inputs)


def call_time(fn: Callable, inputs: list[torch.Tensor], reps: int) -> float:
    """Median seconds of ``fn(*inputs)``: replayed from a CUDA graph on CUDA (as a solve runs it)."""
    from napari_treg.models.cuda_graphs import record_cuda_graph

    if inputs[0].is_cuda:
        replay = record_cuda_graph(fn, inputs, None)
        run = functools.partial(replay, inputs)
    else:
        run = functools.partial(fn, *inputs)
    run()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def call_inputs(prior, size: int) -> dict[str, list[torch.Tensor]]:
    """The networks' inputs at the solve's shapes (UNet at CFG batch 2)."""
    latent = size // prior.downscale
    z = torch.randn(2, 4, latent, latent, device=prior.device, dtype=prior.dtype)
    return {
        "unet": [
            z,
            torch.full((), 500, device=prior.device),
            torch.randn(2, 77, prior.unet.config.cross_attention_dim, device=prior.device, dtype=prior.dtype),
        ],
        "decode": [z[:1]],
        "encode": [torch.rand(1, 3, size, size, device=prior.device, dtype=prior.dtype) * 2 - 1],
    }


def network_calls(prior) -> dict[str, Callable]:
    return {
        "unet": lambda z, t, text: prior.unet(z, t, encoder_hidden_states=text).sample,
        "decode": lambda z: prior.vae.decode(z).sample,
        "encode": lambda x: prior.vae.encode(x).latent_dist.mean,
    }


# -- the candidates ---------------------------------------------------------------------------


def apply_channels_last(prior, args) -> tuple[Callable[[], None], dict]:
    for module in (prior.unet, prior.vae):
        module.to(memory_format=torch.channels_last)

    def undo() -> None:
        for module in (prior.unet, prior.vae):
            module.to(memory_format=torch.contiguous_format)

    return undo, {}


def sdpa_backends() -> dict[str, Any]:
    from torch.nn.attention import SDPBackend

    names = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
    return {name.lower(): getattr(SDPBackend, name) for name in names if hasattr(SDPBackend, name)}


def with_backend(backend, fn: Callable, *args, **kwargs):
    from torch.nn.attention import sdpa_kernel

    context = contextlib.nullcontext() if backend is None else sdpa_kernel(backend)
    with context:
        return fn(*args, **kwargs)


def time_sdpa_backends(prior, size: int, reps: int) -> dict[str, dict[str, float | str]]:
    """Seconds of each network call with each backend (torch's own choice as ``default``)."""
    calls, inputs = network_calls(prior), call_inputs(prior, size)
    table: dict[str, dict[str, float | str]] = {}
    for label, backend in {"default": None, **sdpa_backends()}.items():
        for name, fn in calls.items():
            try:
                with torch.no_grad():
                    seconds = call_time(functools.partial(with_backend, backend, fn), inputs[name], reps)
                table.setdefault(name, {})[label] = round(seconds, 5)
            except Exception as error:  # noqa: BLE001 - a backend that cannot run these shapes is a result
                table.setdefault(name, {})[label] = f"{type(error).__name__}: {str(error)[:120]}"
    return table


def fastest(times: dict[str, float | str]) -> str:
    usable = {k: v for k, v in times.items() if isinstance(v, float)}
    return min(usable, key=usable.get)


def apply_sdpa(prior, args) -> tuple[Callable[[], None], dict]:
    table = time_sdpa_backends(prior, args.size, reps=max(3, args.reps * 5))
    unet_pick = fastest(table["unet"])
    vae_totals = {
        label: table["decode"][label] + table["encode"][label]
        for label in table["decode"]
        if isinstance(table["decode"][label], float) and isinstance(table["encode"].get(label), float)
    }
    vae_pick = min(vae_totals, key=vae_totals.get)
    backends = {"default": None, **sdpa_backends()}
    modules = {
        "unet": (prior.unet, unet_pick),
        "vae.encoder": (prior.vae.encoder, vae_pick),
        "vae.decoder": (prior.vae.decoder, vae_pick),
    }
    for module, pick in modules.values():
        module.forward = functools.partial(with_backend, backends[pick], module.forward)

    def undo() -> None:
        for module, _ in modules.values():
            del module.forward  # the class's forward again

    return undo, {"sdpa_call_s": table, "sdpa_pick": {name: pick for name, (_, pick) in modules.items()}}


class FusedDataConsistency:
    """A data-consistency step (decode, CG, encode, CLIP image embedding) replayed as one CUDA graph.

    Applied from outside, without changing the method: the sampler still calls ``prior.decode``,
    ``data_consistency``, ``prior.encode`` and ``prior.embed_image`` in the same order; the first
    of them runs the whole step from one graph and the others hand back its outputs. The first
    data-consistency step of a solve runs unfused and tells the operator and settings.
    """

    def __init__(self, prior, cache):
        from napari_treg.solver import sampler

        self.prior, self.sampler, self.cache = prior, sampler, cache
        self.originals = {name: getattr(prior, name) for name in ("decode", "encode", "embed_image")}
        self.original_dc = sampler.data_consistency
        self.settings: tuple | None = None  # operator, y, lam, iterations of the solve
        self.stash: dict[str, torch.Tensor] = {}
        self.dc_left = 0
        self.stats = {"dc_steps_fused": 0, "dc_steps_unfused": 0}

    def install(self, steps: int) -> None:
        self.steps = steps
        self.prior.decode, self.prior.encode, self.prior.embed_image = self.decode, self.encode, self.embed_image
        self.sampler.data_consistency = self.data_consistency

    def uninstall(self) -> None:
        for name, method in self.originals.items():
            setattr(self.prior, name, method)
        self.sampler.data_consistency = self.original_dc
        self.cache.clear()

    def start_solve(self) -> None:
        """Called before each restore: how many of its decodes are data-consistency steps."""
        from napari_treg.solver import TRegSettings
        from napari_treg.solver.timesteps import ddim_steps

        config = TRegSettings(steps=self.steps)
        steps = ddim_steps(self.prior.schedule, config.steps, config.dc_every, config.dc_until)
        self.dc_left = sum(step.data_consistency for step in steps)
        self.settings = None

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        is_dc, self.dc_left = self.dc_left > 0, self.dc_left - 1
        if not is_dc or self.settings is None:
            self.stats["dc_steps_unfused"] += is_dc
            return self.originals["decode"](z)
        self.stats["dc_steps_fused"] += 1
        operator, y, lam, iterations = self.settings
        step = functools.partial(self.whole_step, operator, lam, iterations)
        flat = self.cache.run("dc_step", step, z.to(self.prior.device, self.prior.dtype), y)
        self.stash = self.split(flat, z, y)
        return self.stash["x0"]

    def whole_step(self, operator, lam: float, iterations: int, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step's model calls and CG, eagerly (what the graph records), flattened into one tensor."""
        graphs, self.prior.cuda_graphs = self.prior.cuda_graphs, False
        try:
            x0 = self.originals["decode"](z).float()
            x0y = self.original_dc(operator, y, x0, lam, iterations)
            z0y = self.originals["encode"](x0y).float()
            f = self.originals["embed_image"](x0y)
        finally:
            self.prior.cuda_graphs = graphs
        return torch.cat([t.flatten(1) for t in (x0, x0y, z0y, f)], dim=1)

    def split(self, flat: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        batch, scale = z.shape[0], self.prior.downscale
        image = (batch, 3, z.shape[2] * scale, z.shape[3] * scale)
        shapes = {
            "x0": image,
            "x0y": image,
            "z0y": tuple(z.shape),
            "f": (batch, self.prior.image_encoder.config.projection_dim),
        }
        sizes = [int(np.prod(s[1:])) for s in shapes.values()]
        parts = torch.split(flat, sizes, dim=1)
        return {name: part.reshape(shape) for (name, shape), part in zip(shapes.items(), parts)}

    def data_consistency(self, operator, y, x0, lam, iterations):
        if self.stash.get("x0") is x0:
            return self.stash["x0y"]
        self.settings = (operator, y, lam, iterations)  # the first DC step: unfused
        return self.original_dc(operator, y, x0, lam, iterations)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.stash["z0y"] if self.stash.get("x0y") is x else self.originals["encode"](x)

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        if self.stash.get("x0y") is x:
            f, self.stash = self.stash["f"], {}
            return f
        return self.originals["embed_image"](x)


def apply_fused_dc(prior, args, problem: Problem) -> tuple[Callable[[], None], dict]:
    from napari_treg.models.cuda_graphs import GraphCache

    # on CUDA the prior's own cache: one memory pool for all graphs, as it would be in the package
    cache = prior.graphs if prior.device.type == "cuda" else GraphCache(capture=eager_capture)
    fused = FusedDataConsistency(prior, cache)
    fused.install(problem.steps)
    solve = problem.solve

    def solve_fused() -> np.ndarray:
        fused.start_solve()
        return solve()

    problem.solve = solve_fused

    def undo() -> None:
        fused.uninstall()
        problem.solve = solve

    return undo, fused.stats  # counted while the solves run


def compile_module(module: torch.nn.Module, mode: str) -> torch.nn.Module:
    return torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)


def first_calls(prior, size: int) -> float:
    """Seconds of the first call of each network at the solve's shapes (where compilation happens)."""
    calls, inputs = network_calls(prior), call_inputs(prior, size)
    start = time.perf_counter()
    with torch.no_grad():
        for name, fn in calls.items():
            fn(*inputs[name])
    sync()
    return round(time.perf_counter() - start, 2)


def mega_cache(path: str | None, action: str) -> dict:
    """Load or save torch's portable compile cache (torch >= 2.7), when asked for."""
    compiler = torch.compiler
    if not path or not hasattr(compiler, "save_cache_artifacts"):
        return {"mega_cache": "not used" if not path else "not in this torch"}
    file = Path(path)
    if action == "load":
        if not file.is_file():
            return {"mega_cache_loaded": False}
        start = time.perf_counter()
        compiler.load_cache_artifacts(file.read_bytes())
        return {"mega_cache_loaded": True, "mega_cache_load_s": round(time.perf_counter() - start, 2)}
    saved = compiler.save_cache_artifacts()
    if saved is None:
        return {"mega_cache_saved_bytes": 0}
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_bytes(saved[0])
    return {"mega_cache_saved_bytes": len(saved[0])}


def apply_compile(prior, args) -> tuple[Callable[[], None], dict]:
    info = {
        "compile_mode": args.compile_mode,
        "cache_dir": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
        **mega_cache(args.mega_cache, "load"),
    }
    unet = prior.unet
    prior.unet = compile_module(unet, args.compile_mode)
    undo_vae = swap_submodules(
        prior.vae,
        lambda m: m is prior.vae.encoder or m is prior.vae.decoder,
        lambda m: compile_module(m, args.compile_mode),
    )
    info["compile_s"] = first_calls(prior, args.size)
    if args.mega_cache:
        info.update(mega_cache(args.mega_cache, "save"))

    def undo() -> None:
        prior.unet = unet
        undo_vae()

    return undo, info


def apply_fused_norm_act(prior, args) -> tuple[Callable[[], None], dict]:
    from diffusers.models.resnet import ResnetBlock2D

    for name in ("recompile_limit", "cache_size_limit"):  # one compiled variant per block shape
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
            break
    undos = [
        swap_submodules(module, lambda m: isinstance(m, ResnetBlock2D), lambda m: compile_module(m, args.compile_mode))
        for module in (prior.unet, prior.vae)
    ]
    info = {
        "compile_s": first_calls(prior, args.size),
        "compile_mode": args.compile_mode,
        "blocks": sum(isinstance(m, ResnetBlock2D) for m in (*prior.unet.modules(), *prior.vae.modules())),
    }

    def undo() -> None:
        for undo_one in undos:
            undo_one()

    return undo, info


APPLY = {
    "channels_last": apply_channels_last,
    "sdpa": apply_sdpa,
    "compile": apply_compile,
    "fused_norm_act": apply_fused_norm_act,
}


def apply(name: str, prior, args, problem: Problem) -> tuple[Callable[[], None], dict]:
    if name == "fused_dc":
        return apply_fused_dc(prior, args, problem)
    return APPLY[name](prior, args)


def apply_combined(kept: list[str], prior, args, problem: Problem) -> tuple[Callable[[], None], dict]:
    undos, info = [], {"combined": kept}
    for name in kept:
        undo, part = apply(name, prior, args, problem)
        undos.append(undo)
        info[name] = part  # the same dict: counts made while the solves run show up

    def undo_all() -> None:
        for undo in reversed(undos):
            undo()

    return undo_all, info


# -- the run ----------------------------------------------------------------------------------


def graph_floor() -> dict:
    """The baseline benchmarks/baselines/graph_floor.py, in a subprocess."""
    path = HERE / "baselines" / "graph_floor.py"
    if not path.is_file():
        return {"error": f"{path} missing (it is part of the repository: restore it with git checkout)"}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    result = json.loads(done.stdout[done.stdout.index("{") :])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def emit(row: dict, name: str) -> None:
    """One ``CANDIDATE {json}`` line on stdout and in $OUT/<name>.jsonl."""
    line = json.dumps(row, default=str)
    print("CANDIDATE " + line, flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        with open(Path(out) / f"{name}.jsonl", "a") as handle:
            handle.write(line + "\n")


def run_candidate(name: str, problem: Problem, args, reference: dict, result: dict, kept: list[str]) -> dict:
    prior = problem.prior
    row: dict[str, Any] = {"candidate": name}
    undo = None
    try:
        start = time.perf_counter()
        undo, info = (
            apply_combined(kept, prior, args, problem) if name == "combined" else apply(name, prior, args, problem)
        )
        row["apply_s"] = round(time.perf_counter() - start, 2)
        row.update(info)
        timing, image = measure(problem, args.reps)
        row.update(info)  # again: some candidates count while the solves run
        row.update(timing)
        row.update({f"{k}_vs_graphed": v for k, v in difference(image, reference["image"]).items() if k != "range"})
        row["within_bar"] = within_bar(difference(image, reference["image"]), result.get("bar", {}))
        row["over_graphed"] = round(row["restore_s"] / reference["restore_s"], 3)
        # what the first solve costs beyond today's (recording, or compiling what the first calls did not)
        row["extra_first_solve_s"] = round(row["first_solve_s"] - reference["first_solve_s"], 2)
        floor = result.get("graph_floor_s")
        if floor:
            row["over_graph_floor"] = round(row["restore_s"] / floor, 3)
            row["graph_floor_over"] = round(floor / row["restore_s"], 3)  # target >= 1.4
        row["pays"] = bool(row["within_bar"] and row["over_graphed"] < PAYS_BELOW)
    except Exception:  # noqa: BLE001 - one failed candidate must not cost the others
        row["error"] = traceback.format_exc()[-2500:]
    finally:
        if undo is not None:
            undo()
        prior.graphs.clear()
    emit(row, args.name)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    ap.add_argument("--compile-mode", default="default", choices=("default", "max-autotune-no-cudagraphs"))
    ap.add_argument("--mega-cache", default=None, help="file for torch's portable compile cache (load, then save)")
    ap.add_argument("--no-floor", action="store_true", help="skip graph_floor.py")
    ap.add_argument("--no-eager-bar", action="store_true", help="skip the eager solve that sets the accuracy bar")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=float(os.environ.get("PART_LIMIT_S", 1e9)) - 10,
        help="skip candidates that would not fit in this (default: run_gpu_checks.sh's limit for the part - 10 s)",
    )
    ap.add_argument("--smoke", action="store_true", help="the tiny model on the CPU, 32x32, 4 steps")
    ap.add_argument("--kept", default="", help="candidates that paid in an earlier run, for 'combined'")
    ap.add_argument("--name", default="gpu_candidates", help="of the output files, $OUT/<name>.json and .jsonl")
    args = ap.parse_args()
    names = [n for n in args.candidates.split(",") if n]
    kept = [n for n in args.kept.split(",") if n]
    unknown = set(names + kept) - set(CANDIDATES)
    if unknown:
        ap.error(f"unknown candidates {sorted(unknown)}; choose from {', '.join(CANDIDATES)}")
    started = time.perf_counter()
    result: dict[str, Any] = {"env": environment(), "steps": args.steps, "size": args.size, "reps": args.reps}
    if args.smoke:
        from napari_treg.models import load_model

        torch.set_num_threads(1)
        args.size, args.steps, args.no_floor = 32, min(args.steps, 4), True
        result.update(size=args.size, steps=args.steps)
        prior = load_model("tiny", device="cpu")
    else:
        if not args.no_floor:
            floor = graph_floor()
            result["baseline_graph_floor"] = floor
            result["graph_floor_s"] = floor.get("graph_floor_s")
        prior = build_sd15_prior("cuda", torch.float16)
    result["dtype"] = str(prior.dtype)
    problem = Problem(prior, args.size, args.steps)

    timing, image = measure(problem, args.reps)
    reference = {**timing, "image": image}
    result["graphed"] = timing
    if result.get("graph_floor_s"):
        result["graphed"]["over_graph_floor"] = round(timing["restore_s"] / result["graph_floor_s"], 3)
    if not args.no_eager_bar:
        graphs, prior.cuda_graphs = prior.cuda_graphs, False
        start = time.perf_counter()
        eager = problem.solve()
        result["eager_s"] = round(time.perf_counter() - start, 3)
        prior.cuda_graphs = graphs
        result["bar"] = difference(image, eager)  # today's graphed vs eager, this run
    emit(
        {
            "candidate": "graphed (today)",
            **timing,
            "bar": result.get("bar"),
            "graph_floor_s": result.get("graph_floor_s"),
        },
        args.name,
    )

    for name in names:
        if name == "combined" and len(kept) < 2:
            emit({"candidate": name, "skipped": f"fewer than two candidates paid: {kept}"}, args.name)
            continue
        left = args.budget_s - (time.perf_counter() - started)
        if left < min_seconds(name, kept):
            emit({"candidate": name, "skipped": f"{left:.0f} s of the budget left"}, args.name)
            continue
        row = run_candidate(name, problem, args, reference, result, kept)
        result[name] = row
        if row.get("pays") and name != "combined" and name not in kept:
            kept.append(name)
    result["paid"] = kept
    result["wall_s"] = round(time.perf_counter() - started, 1)
    write_result(result, ("smoke_" if args.smoke else "") + args.name)


def write_result(result: dict, name: str) -> None:
    text = json.dumps(result, indent=1, default=str)
    out = os.environ.get("OUT")
    if out:
        (Path(out) / f"{name}.json").write_text(text)
    summary = {k: v for k, v in result.items() if k not in ("env", "baseline_graph_floor")}
    print(json.dumps(summary, default=str)[:6000])


if __name__ == "__main__":
    main()
