"""A tiled restore and a tiled ensemble of one large image under an address-space limit (CPU, tiny model).

Issue 33's case: a tiled ensemble of a 2048x2048 image failed with "cannot allocate" under a 5 GB
address space where the tiled restore of the same image fitted. Each job is the command line's
``restore`` in a fresh process whose ``RLIMIT_AS`` is the limit; the table gives its exit status, wall
time and peak resident set (``ru_maxrss`` of that process alone).

    python benchmarks/address_space.py                      # 2048x2048, 5 GiB (docs/reliability.md)
    python benchmarks/address_space.py --size 1024 --limit-gib 4
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

#: the two jobs: the tiled restore, and the same with an ensemble of ``--samples``
JOBS = ("restore", "ensemble")


def cli_args(image: Path, out: Path, args: argparse.Namespace, job: str) -> list[str]:
    """The ``napari-treg restore`` arguments of one job."""
    common = ["restore", str(image), "-o", str(out), "--operator", "gauss", "--sigma", "1", "--model", "tiny"]
    common += [
        "--device",
        "cpu",
        "--steps",
        str(args.steps),
        "--tile-size",
        str(args.tile_size),
        "--noise",
        str(args.noise),
    ]
    return common + (["--samples", str(args.samples)] if job == "ensemble" else [])


def run_limited(argv: list[str], limit_bytes: int, log: Path, timeout: float) -> dict:
    """Run the CLI in a child limited to ``limit_bytes`` of address space: rc, seconds, peak RSS in MiB."""

    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    command = [sys.executable, "-m", "napari_treg.cli", *argv]
    started = time.perf_counter()
    with open(log, "w") as sink:
        child = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, preexec_fn=limit)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                pid, status, usage = os.wait4(child.pid, 0)
                break
            time.sleep(0.5)
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "seconds": time.perf_counter() - started,
        "peak MiB": usage.ru_maxrss / 1024,
        "outcome": outcome(log.read_text(errors="replace")),
    }


def outcome(log: str) -> str:
    """The CLI's line saying what it wrote (or its last line, e.g. the error), without the temporary folder."""
    lines = [line for line in log.replace("\r", "\n").splitlines() if line.strip()]
    wrote = [line for line in lines if line.startswith("napari-treg: wrote")]
    line = (wrote or lines or [""])[-1]
    return re.sub(r"/\S*/", "", line)[-160:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--limit-gib", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument(
        "--noise", type=float, default=0.2, help="model units; sets the data share's CG iterations (time, not memory)"
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per job")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    limit = int(args.limit_gib * 2**30)
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "y.tif"
        tifffile.imwrite(image, np.random.default_rng(0).random((args.size, args.size), dtype=np.float32))
        print(
            f"{args.size}x{args.size} float32, RLIMIT_AS {args.limit_gib:g} GiB, {args.steps} steps, tiles {args.tile_size}"
        )
        print("| job | exit status | seconds | peak resident set MiB | outcome |")
        print("|---|---|---|---|---|")
        for job in JOBS:
            out = Path(folder) / f"{job}.tif"
            row = run_limited(cli_args(image, out, args, job), limit, Path(folder) / f"{job}.log", args.timeout)
            name = f"tiled {job}" + (f", {args.samples} samples" if job == "ensemble" else "")
            print(
                f"| {name} | {row['rc']} | {row['seconds']:.0f} | {row['peak MiB']:.0f} | {row['outcome']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
