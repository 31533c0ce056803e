"""Peak host memory and time of one 2-D kernel blur (forward + adjoint) per image size and dtype (CPU).

float64 is the dtype of the residuals and the provenance; torch's direct float64 convolution on a CPU
unfolds every pixel's neighbourhood, the FFT path (``operators.convolution.uses_fft``) does not. Each
case runs in a fresh process (the resident-set high-water mark above the start):

    python benchmarks/convolution_memory.py                      # 512 and 2048, 13x13 kernel
    python benchmarks/convolution_memory.py --sizes 1024 --kernel 25
"""

from __future__ import annotations

import argparse
import subprocess
import sys

ONE_RUN = """
import resource, time, numpy as np, torch
from napari_treg.operators import KernelBlur
torch.set_num_threads(1)
op = KernelBlur(np.ones(({k}, {k})))
x = torch.rand(1, 3, {n}, {n}, dtype=torch.{dtype})
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
op.adjoint(op.forward(x))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) / 1024, time.perf_counter() - t)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 2048])
    parser.add_argument("--kernel", type=int, default=13)
    args = parser.parse_args()
    print("| image | dtype | peak above start (MiB) | image (MiB) | seconds |\n|---|---|---|---|---|")
    for n in args.sizes:
        for dtype, size in (("float32", 4), ("float64", 8)):
            code = ONE_RUN.format(k=args.kernel, n=n, dtype=dtype)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
            peak, seconds = (float(v) for v in out.split())
            print(
                f"| {n}x{n} RGB, {args.kernel}x{args.kernel} kernel | {dtype} | {peak:.0f} | {3 * n * n * size / 2**20:.0f} | {seconds:.2f} |"
            )


if __name__ == "__main__":
    main()
