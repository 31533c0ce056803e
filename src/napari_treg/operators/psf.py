"""Modelled microscope PSFs (widefield, confocal) and the voxel-size rule of 3-D PSFs.

The optics are not written here: the PSF comes from ``psfmodels`` (Talley Lambert's package of
the Gibson-Lanni scalar and the Aguet et al. vectorial models; ``pip install psfmodels``), the
library among ``psfmodels``, Christoph Gohlke's ``psf`` and ``psf-generator`` that takes the
immersion and sample refractive indices separately (docs/validation.md compares them).
"""

from __future__ import annotations

import math

import numpy as np

from napari_treg.errors import InvalidInputError
from napari_treg.operators.base import as_positive_number
from napari_treg.operators.volume import VolumeBlur, check_voxel_size

#: the modelled PSF spans this many axial / lateral FWHMs on each side of its centre
AXIAL_REACH, LATERAL_REACH = 1.5, 2.0
#: the most planes and pixels on a side of a modelled PSF
MAX_PSF_PLANES, MAX_PSF_SIDE = 65, 129
#: relative voxel-size difference accepted as equal (a rounding of the metadata)
VOXEL_TOLERANCE = 1e-3


def modelled_psf(
    kind: str,
    *,
    na: float,
    wavelength: float,
    immersion_index: float,
    sample_index: float,
    voxel_size: tuple[float, float, float],
    depth: float = 0.0,
    excitation_wavelength: float | None = None,
) -> np.ndarray:
    """A widefield or confocal PSF ``(Z, Y, X)`` (float64, sum 1) from ``psfmodels`` (vectorial model).

    ``wavelength`` (emission), ``voxel_size`` ``(z, y, x)`` and ``depth`` (of the point source below
    the coverslip; with ``sample_index != immersion_index`` it adds spherical aberration) are in
    micrometres. The PSF is centred and spans about 1.5 axial and 2 lateral FWHMs on each side.
    """
    psfmodels = _psfmodels()
    dz, dy, dx = check_voxel_size(voxel_size, "voxel_size")
    if not math.isclose(dy, dx, rel_tol=VOXEL_TOLERANCE):
        raise InvalidInputError(f"a modelled PSF needs square pixels, got y {dy:g} and x {dx:g}")
    na = as_positive_number(na, "na")
    ni = as_positive_number(immersion_index, "immersion_index")
    ns = as_positive_number(sample_index, "sample_index")
    wavelength = as_positive_number(wavelength, "wavelength")
    if na >= ni:
        raise InvalidInputError(f"the NA ({na:g}) must be below the immersion index ({ni:g})")
    planes, side = psf_extent(na, wavelength, ni, dz, dx)
    common = dict(dxy=dx, dz=dz, pz=float(depth), NA=na, ns=ns, ni=ni, ni0=ni, model="vectorial")
    if kind == "widefield":
        psf = psfmodels.make_psf(planes, side, wvl=wavelength, **common)
    elif kind == "confocal":
        excitation = wavelength if excitation_wavelength is None else excitation_wavelength
        psf = psfmodels.confocal_psf(planes, side, ex_wvl=excitation, em_wvl=wavelength, pinhole_au=1.0, **common)
    else:
        raise InvalidInputError(f"unknown PSF kind {kind!r}; choose widefield or confocal")
    psf = np.clip(np.asarray(psf, dtype=np.float64), 0.0, None)
    return psf / psf.sum()


def psf_extent(na: float, wavelength: float, ni: float, dz: float, dxy: float) -> tuple[int, int]:
    """Odd ``(planes, side)`` covering :data:`AXIAL_REACH` axial and :data:`LATERAL_REACH` lateral FWHMs."""
    axial_fwhm = 2.0 * ni * wavelength / na**2
    lateral_fwhm = 0.51 * wavelength / na
    planes = 2 * max(1, math.ceil(AXIAL_REACH * axial_fwhm / dz)) + 1
    side = 2 * max(1, math.ceil(LATERAL_REACH * lateral_fwhm / dxy)) + 1
    if planes > MAX_PSF_PLANES or side > MAX_PSF_SIDE:
        raise InvalidInputError(
            f"the modelled PSF would be {planes} planes x {side} pixels (voxel {dz:g} x {dxy:g} um): "
            f"at most {MAX_PSF_PLANES} x {MAX_PSF_SIDE}; use coarser voxels"
        )
    return planes, side


def modelled_blur(kind: str, *, voxel_z: float, voxel_xy: float, **optics) -> VolumeBlur:
    """A :class:`VolumeBlur` by the modelled ``kind`` PSF (see :func:`modelled_psf`), voxel size recorded."""
    voxel = (voxel_z, voxel_xy, voxel_xy)
    source = ", ".join(f"{name}={value:g}" for name, value in optics.items() if value is not None)
    return VolumeBlur(modelled_psf(kind, voxel_size=voxel, **optics), voxel_size=voxel, source=f"{kind} {source}")


def match_voxel_size(psf_voxel, stack_voxel) -> None:
    """Refuse, naming both, a PSF sampled at another voxel size than the stack (``(z, y, x)`` each)."""
    psf_voxel = check_voxel_size(psf_voxel, "the PSF's voxel size")
    stack_voxel = check_voxel_size(stack_voxel, "the stack's voxel size")
    if not all(math.isclose(a, b, rel_tol=VOXEL_TOLERANCE) for a, b in zip(psf_voxel, stack_voxel)):
        raise InvalidInputError(
            f"the PSF's voxel size (z, y, x) {_sizes(psf_voxel)} differs from the stack's {_sizes(stack_voxel)}: "
            "resample the PSF to the stack's voxel size (napari_treg.operators.psf.resample_psf)"
        )


def resample_psf(psf: np.ndarray, psf_voxel, stack_voxel) -> np.ndarray:
    """``psf`` ``(Z, Y, X)`` resampled (linear interpolation about its centre voxel) to the stack's voxel size."""
    from scipy.ndimage import map_coordinates

    psf_voxel = check_voxel_size(psf_voxel, "the PSF's voxel size")
    stack_voxel = check_voxel_size(stack_voxel, "the stack's voxel size")
    psf = np.asarray(psf, dtype=np.float64)
    centre = [n // 2 for n in psf.shape]
    radii = [math.floor(c * a / b) for c, a, b in zip(centre, psf_voxel, stack_voxel)]
    grids = [c + np.arange(-r, r + 1) * b / a for c, r, a, b in zip(centre, radii, psf_voxel, stack_voxel)]
    coordinates = np.stack(np.meshgrid(*grids, indexing="ij"))
    out = np.clip(map_coordinates(psf, coordinates, order=1, mode="constant"), 0.0, None)
    if not out.sum() > 0:
        raise InvalidInputError(f"the PSF resampled to voxel {_sizes(stack_voxel)} is all zero")
    return out / out.sum()


def _sizes(voxel) -> str:
    return "(" + ", ".join(f"{v:g}" for v in voxel) + ")"


def _psfmodels():
    try:
        import psfmodels
    except ImportError:
        raise InvalidInputError(
            "a modelled PSF needs the psfmodels package: pip install psfmodels (or give a measured PSF)"
        ) from None
    return psfmodels


def psf_blur(kernel, voxel_size: tuple[float, float, float] | None = None):
    """The blur by a measured PSF: a :class:`VolumeBlur` for a 3-D PSF of several planes, else a 2-D
    :class:`~napari_treg.operators.KernelBlur` (the ``kernel`` operator of the registry)."""
    from napari_treg.operators.base import as_numpy
    from napari_treg.operators.blur import KernelBlur

    array = squeezed_psf(np.asarray(as_numpy(kernel, "kernel")))
    if array.ndim == 3:
        return VolumeBlur(array, voxel_size=voxel_size)
    return KernelBlur(array)


def psf_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A PSF's shape without leading axes of one plane: a ``(1, Y, X)`` PSF is 2-D."""
    dims = tuple(int(n) for n in shape)
    while len(dims) > 2 and dims[0] == 1:
        dims = dims[1:]
    return dims


def squeezed_psf(kernel: np.ndarray) -> np.ndarray:
    """``kernel`` reshaped to :func:`psf_shape`."""
    return kernel.reshape(psf_shape(kernel.shape))


def is_volume_psf(shape: tuple[int, ...]) -> bool:
    """Whether a PSF of this shape blurs across planes (3-D, several planes), so the stack is one volume."""
    return len(psf_shape(shape)) == 3
