"""Widefield PSFs from psfmodels (vectorial, scalar Gibson-Lanni) and Christoph Gohlke's psf, side by side (CPU).

The same optics (NA 1.2 water objective in water, emission 520 nm, voxels 0.1 x 0.04 x 0.04 um,
focus at the coverslip, so no index mismatch) from each library, normalised to sum 1; printed: the
lateral and axial FWHM (from the half-maximum crossings, linearly interpolated) and the correlation
of each with psfmodels' vectorial PSF (the one napari_treg.operators.psf uses).

    python benchmarks/psf_libraries.py
"""

from __future__ import annotations

import time

import numpy as np

NA, WAVELENGTH, INDEX = 1.2, 0.52, 1.33
DZ, DXY, HALF_Z, HALF_XY = 0.1, 0.04, 15, 15


def fwhm(profile: np.ndarray, step: float) -> float:
    """Full width at half maximum of a 1-D profile peaked at its centre."""
    half, centre = profile.max() / 2, len(profile) // 2
    right = centre + np.argmax(profile[centre:] < half)
    left = centre - np.argmax(profile[centre::-1] < half)
    x_right = right - 1 + (profile[right - 1] - half) / (profile[right - 1] - profile[right])
    x_left = left + 1 - (profile[left + 1] - half) / (profile[left + 1] - profile[left])
    return float((x_right - x_left) * step)


def psfmodels_psf(model: str) -> np.ndarray:
    import psfmodels

    common = dict(dxy=DXY, dz=DZ, NA=NA, wvl=WAVELENGTH, ns=INDEX, ni=INDEX, ni0=INDEX, model=model)
    return psfmodels.make_psf(2 * HALF_Z + 1, 2 * HALF_XY + 1, **common)


def gohlke_psf() -> np.ndarray:
    import psf

    shape, dims = (HALF_Z + 1, HALF_XY + 1), (HALF_Z * DZ, HALF_XY * DXY)
    nm = WAVELENGTH * 1000
    model = psf.PSF(
        psf.ISOTROPIC | psf.WIDEFIELD, shape, dims, ex_wavelen=nm, em_wavelen=nm, num_aperture=NA, refr_index=INDEX
    )
    return model.volume()


def main() -> None:
    rows = {}
    for name, make in (
        ("psfmodels vectorial", lambda: psfmodels_psf("vectorial")),
        ("psfmodels scalar", lambda: psfmodels_psf("scalar")),
        ("psf (Gohlke) widefield", gohlke_psf),
    ):
        started = time.perf_counter()
        volume = np.asarray(make(), dtype=np.float64)
        rows[name] = (volume / volume.sum(), time.perf_counter() - started)
    reference = rows["psfmodels vectorial"][0]
    print(f"NA {NA}, emission {WAVELENGTH} um, n {INDEX}, voxel {DZ} x {DXY} x {DXY} um, shape {reference.shape}\n")
    print("| library / model | lateral FWHM (um) | axial FWHM (um) | correlation with psfmodels vectorial | seconds |")
    print("|---|---|---|---|---|")
    for name, (volume, seconds) in rows.items():
        c = tuple(n // 2 for n in volume.shape)
        lateral, axial = fwhm(volume[c[0], c[1]], DXY), fwhm(volume[:, c[1], c[2]], DZ)
        corr = (
            float(np.corrcoef(volume.ravel(), reference.ravel())[0, 1]) if volume.shape == reference.shape else np.nan
        )
        print(f"| {name} | {lateral:.3f} | {axial:.3f} | {corr:.4f} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
