"""Run the Stable Diffusion 1.5 code path at full size on the CPU (random weights, no download).

Checks what the tiny model cannot: the real widths (CLIP text 768, ViT-L/14 image tower at
224 px with a 768-d projection, 4-channel x8 latent) through ``restore``, with every step a
data-consistency step (28 s in all on this 2-core machine, 2026-11-27).

    python benchmarks/sd15_cpu_check.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_random import build_sd15_prior  # noqa: E402


def main() -> None:
    from napari_treg import restore
    from napari_treg.operators import SuperResolution

    started = time.perf_counter()
    prior = build_sd15_prior(device="cpu", dtype=torch.float32)
    print(f"build: {time.perf_counter() - started:.1f} s")
    text, image = prior.embed_text(["a cat"]), prior.embed_image(torch.zeros(1, 3, 64, 64))
    print(f"text embedding {tuple(text.shape)}, image embedding {tuple(image.shape)}")
    measurement = np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)
    started = time.perf_counter()
    result, info = restore(
        measurement, SuperResolution(8), prompt="a cat", model=prior, steps=3, dc_every=1, return_info=True
    )
    print(
        f"restore 8x8 -> {result.shape}, 3 steps, all data-consistency: {time.perf_counter() - started:.1f} s, "
        f"finite: {bool(np.isfinite(result).all())}, residual {info['residual']:.3f}"
    )


if __name__ == "__main__":
    main()
