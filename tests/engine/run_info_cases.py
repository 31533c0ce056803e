"""Runs whose ``info`` is pinned in ``data/run_info_before.json`` (written by the code before the typed record).

Regenerate (only when a change to ``info`` is meant): ``PYTHONPATH=src:tests python -m engine.run_info_cases``
from the repository root; the file then holds what this tree's runs record.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_treg import ensemble, restore
from napari_treg.operators import Denoising, GaussianBlur, VolumeBlur

PINNED = Path(__file__).parent / "data" / "run_info_before.json"
#: what differs between two runs of the same case: time, the installed versions
VOLATILE = ("seconds", "seconds_per_sample", "versions")
QUICK = dict(model="analytic", steps=3)


def measurement(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def photons(seed: int = 1, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    expected = np.linspace(5.0, 300.0, size * size).reshape(size, size)
    return (100.0 + 2.0 * rng.poisson(expected) + rng.normal(0.0, 3.0, expected.shape)).astype(np.float32)


def volume_psf() -> np.ndarray:
    z, y, x = np.meshgrid(np.arange(-1, 2), np.arange(-2, 3), np.arange(-2, 3), indexing="ij")
    return np.exp(-0.5 * (z**2 + y**2 + x**2))


def restorations() -> dict[str, Any]:
    """The :class:`Restoration` of each pinned restore."""
    blur = GaussianBlur(1.0)
    return {
        "restore": restore(measurement((2, 16, 16)), blur, prompt="cells", seed=5, return_info=True, **QUICK),
        "tiled": restore(
            measurement((40, 40), 2), Denoising(), tile_size=24, tile_overlap=8, return_info=True, **QUICK
        ),
        "volume": restore(
            measurement((4, 16, 16), 3),
            VolumeBlur(volume_psf(), voxel_size=(0.3, 0.1, 0.1)),
            batch_size=2,
            noise=0.05,
            return_info=True,
            **QUICK,
        ),
        "photon": restore(
            photons(),
            Denoising(),
            noise_model="poisson-gaussian",
            gain=2.0,
            read_sd=3.0,
            offset=100.0,
            return_info=True,
            **QUICK,
        ),
        "photon_estimated": restore(
            photons(2, 64), Denoising(), noise_model="poisson-gaussian", offset=100.0, return_info=True, **QUICK
        ),
    }


def ensembles() -> dict[str, Any]:
    """The :class:`Ensemble` of each pinned ensemble."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the data-first cg_lambda replaced: recorded in info["replaced"]
        prompted = ensemble(
            measurement((16, 16), 4),
            Denoising(),
            samples=3,
            noise=0.05,
            prompt="cells",
            schedule="data-first",
            cg_lambda=0.5,
            **QUICK,
        )
    return {
        "ensemble": prompted,
        "ensemble_holdout": ensemble(
            measurement((16, 16), 5), Denoising(), samples=4, noise=0.05, holdout=0.2, **QUICK
        ),
        "ensemble_photon": ensemble(
            photons(3),
            Denoising(),
            samples=3,
            noise_model="poisson-gaussian",
            gain=2.0,
            read_sd=3.0,
            offset=100.0,
            keep_samples=False,
            **QUICK,
        ),
    }


def infos(restored: dict | None = None, sampled: dict | None = None) -> dict[str, dict]:
    """``info`` of every pinned run (of :func:`restorations` and :func:`ensembles`, made unless given), and
    each ensemble's ``restoration_info()``."""
    recorded = {name: result.info for name, result in (restored or restorations()).items()}
    for name, result in (sampled or ensembles()).items():
        recorded[name] = result.info
        recorded[f"{name}_as_restoration"] = result.restoration_info()
    return recorded


def pinnable(value: Any) -> Any:
    """``value`` as JSON that keeps tuples apart from lists (``{"tuple": [...]}``), without the volatile keys."""
    if isinstance(value, dict):
        return {key: pinnable(item) for key, item in value.items() if key not in VOLATILE}
    if isinstance(value, tuple):
        return {"tuple": [pinnable(item) for item in value]}
    if isinstance(value, list):
        return [pinnable(item) for item in value]
    return value


if __name__ == "__main__":
    PINNED.write_text(json.dumps({name: pinnable(info) for name, info in infos().items()}, indent=1) + "\n")
    sys.stdout.write(f"wrote {PINNED}\n")
