"""The Poisson-Gaussian estimate against the truth (CPU, seconds).

Target (issue 31): on a 256x256 ramp of 5-500 photons with gain 2, read sd 3, offset 100, the
estimated variance at 300 and at 800 ADU is within 15 % of the truth. Prints, per seed, the fitted
model and the ratio estimated / true variance at both intensities, with the offset given and not,
and the same for the photon-limited sample of the plugin (a textured image, blurred by 1 px).

    python benchmarks/photon_noise.py             # 10 seeds
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from napari_treg.noise import PoissonGaussian, estimate_poisson_gaussian
from napari_treg.plugin.sample_data import SAMPLE_CAMERA, fluorescence_photons

TRUTH = PoissonGaussian(gain=2.0, read_sd=3.0, offset=100.0)
AT = (300.0, 800.0)


def ramp(size: int = 256) -> np.ndarray:
    return TRUTH.offset + TRUTH.gain * np.tile(np.linspace(5.0, 500.0, size), (size, 1))


def ratios(model: PoissonGaussian, truth: PoissonGaussian) -> list[float]:
    return [model.variance(adu) / truth.variance(adu) for adu in AT]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    worst = 0.0
    print("| image | seed | offset | fitted model | var ratio at 300 ADU | at 800 ADU | seconds |")
    print("|---|---|---|---|---|---|---|")
    for seed in range(args.seeds):
        noisy = TRUTH.simulate(ramp(), np.random.default_rng(seed))
        for offset in (None, TRUTH.offset):
            started = time.perf_counter()
            model = estimate_poisson_gaussian(noisy, offset=offset)
            seconds = time.perf_counter() - started
            r = ratios(model, TRUTH)
            worst = max(worst, *(abs(x - 1) for x in r))
            given = "given" if offset is not None else "not given"
            fitted = f"gain {model.gain:.3f}, read sd {model.read_sd:.2f}, offset {model.offset:.1f}"
            print(f"| ramp | {seed} | {given} | {fitted} | {r[0]:.3f} | {r[1]:.3f} | {seconds:.3f} |")
    (_, _, _), (measured, _, _) = fluorescence_photons()
    model = estimate_poisson_gaussian(measured, offset=SAMPLE_CAMERA.offset)
    r = ratios(model, SAMPLE_CAMERA)
    fitted = f"gain {model.gain:.3f}, read sd {model.read_sd:.2f}, offset {model.offset:.1f}"
    print(f"| photon-limited sample | 0 | given | {fitted} | {r[0]:.3f} | {r[1]:.3f} | |")
    print(f"ramp: largest |estimated / true variance - 1| over seeds and both intensities: {worst:.3f} (target 0.15)")


if __name__ == "__main__":
    main()
