"""Blur operators: Gaussian, linear motion and any measured kernel (PSF).

All blurs use the mirror boundary of :mod:`.convolution` and keep the image size.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators.base import (
    DeviceCopies,
    LinearOperator,
    as_numpy,
    as_positive_number,
    exact,
)
from napari_treg.operators.convolution import correlate_2d, correlate_2d_adjoint, correlate_axis, correlate_axis_adjoint

#: the largest blur kernel side in pixels (Gaussian sigma up to 128, motion length up to 1024): larger
#: kernels are refused before anything is allocated
MAX_KERNEL_SIZE = 1025
#: the largest blurs whose kernels fit: a Gaussian kernel spans 8 sigma, a motion kernel its length
MAX_GAUSSIAN_SIGMA = (MAX_KERNEL_SIZE - 1) // 8
MAX_MOTION_LENGTH = MAX_KERNEL_SIZE - 1


def check_kernel_size(shape: tuple[int, ...], what: str) -> None:
    """Raise InvalidInputError if a kernel of ``shape`` is larger than :data:`MAX_KERNEL_SIZE` on a side."""
    if max(shape) > MAX_KERNEL_SIZE:
        size = "x".join(str(side) for side in shape)
        raise InvalidInputError(
            f"{what} needs a {size}-pixel kernel; at most {MAX_KERNEL_SIZE} pixels on a side are supported"
        )


def gaussian_taps(sigma: float, radius: int) -> torch.Tensor:
    """Normalised 1D Gaussian taps at offsets ``-radius .. radius`` (float64)."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


class GaussianBlur(LinearOperator):
    """Isotropic Gaussian blur of standard deviation ``sigma`` pixels.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels (> 0).
    size : int, optional
        Kernel width (odd); default ``2 * ceil(4 * sigma) + 1``. The paper uses 61 px
        with sigma 5.
    """

    def __init__(self, sigma: float, size: int | None = None):
        self.sigma = as_positive_number(sigma, "GaussianBlur sigma")
        if size is None:
            size = 2 * math.ceil(4 * self.sigma) + 1
            check_kernel_size((size,), f"GaussianBlur sigma {self.sigma:g} (sigma <= {MAX_GAUSSIAN_SIGMA})")
        size = as_positive_number(size, "GaussianBlur size", integer=True)
        if size % 2 == 0:
            raise InvalidInputError(f"GaussianBlur size must be odd, got {size}")
        check_kernel_size((size,), f"GaussianBlur size {size}")
        self.size = size
        self._taps = DeviceCopies(gaussian_taps(self.sigma, size // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.size // 2
        x = correlate_axis(x, self._taps.like(x), -r, 1, x.shape[2], dim=2)
        return correlate_axis(x, self._taps.like(x), -r, 1, x.shape[3], dim=3)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        r = self.size // 2
        y = correlate_axis_adjoint(y, self._taps.like(y), -r, 1, y.shape[3], dim=3)
        return correlate_axis_adjoint(y, self._taps.like(y), -r, 1, y.shape[2], dim=2)

    def __repr__(self) -> str:
        return f"GaussianBlur(sigma={exact(self.sigma)}, size={self.size})"


class KernelBlur(LinearOperator):
    """Convolution with any 2D kernel, e.g. a measured microscope PSF.

    The kernel is normalised to sum 1; its centre is pixel ``(kh // 2, kw // 2)``.
    It must be finite and non-negative with a positive sum.
    """

    def __init__(self, kernel: np.ndarray | torch.Tensor):
        self.kernel = validate_kernel(kernel)
        # convolution = correlation with the flipped kernel
        self._flipped = DeviceCopies(torch.flip(self.kernel, dims=(0, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return correlate_2d(x, self._flipped.like(x))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return correlate_2d_adjoint(y, self._flipped.like(y))

    def __repr__(self) -> str:
        kh, kw = self.kernel.shape
        return f"KernelBlur(kernel={kh}x{kw})"


class MotionBlur(KernelBlur):
    """Linear camera motion over ``length`` pixels at ``angle`` degrees.

    The angle is counter-clockwise from the image's x axis (rows grow downwards).
    The line is drawn anti-aliased (bilinear), and the kernel sums to 1.
    """

    def __init__(self, length: float, angle: float = 0.0):
        self.length = as_positive_number(length, "MotionBlur length")
        if not math.isfinite(float(angle)):
            raise InvalidInputError(f"MotionBlur angle must be finite, got {angle!r}")
        self.angle = float(angle) + 0.0  # -0.0 -> 0.0: the same blur, one repr
        super().__init__(motion_kernel(self.length, self.angle))

    def __repr__(self) -> str:
        return f"MotionBlur(length={exact(self.length)}, angle={exact(self.angle)})"


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """An anti-aliased line of ``length`` pixels through the centre of an odd square."""
    size = 2 * math.ceil(length / 2) + 1
    check_kernel_size((size, size), f"MotionBlur length {length:g} (length <= {MAX_MOTION_LENGTH})")
    centre = size // 2
    kernel = np.zeros((size, size), dtype=np.float64)
    n = max(int(math.ceil(4 * length)), 2)
    theta = math.radians(angle)
    for s in np.linspace(-length / 2, length / 2, n):
        col, row = centre + s * math.cos(theta), centre - s * math.sin(theta)
        _splat(kernel, row, col, 1.0 / n)
    return kernel / kernel.sum()


def _splat(kernel: np.ndarray, row: float, col: float, weight: float) -> None:
    r0, c0 = int(math.floor(row)), int(math.floor(col))
    fr, fc = row - r0, col - c0
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            if 0 <= r < kernel.shape[0] and 0 <= c < kernel.shape[1]:
                kernel[r, c] += weight * wr * wc


def validate_kernel(kernel: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A 2D, finite, non-negative kernel with positive sum, normalised to sum 1 (float64)."""
    return validate_psf(kernel, ndim=2)


def validate_psf(kernel: np.ndarray | torch.Tensor, ndim: int) -> torch.Tensor:
    """A finite, non-negative ``ndim``-D kernel (2: ``(Y, X)``, 3: ``(Z, Y, X)``) with positive sum,
    normalised to sum 1 (float64). For ``ndim`` 3 a 2D kernel is a volume of one plane."""
    array = np.asarray(as_numpy(kernel, "kernel"))
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"the blur kernel must be a real numeric array, got dtype {array.dtype}")
    array = array.astype(np.float64)
    while array.ndim > ndim and array.shape[0] == 1:
        array = array[0]
    if ndim == 3 and array.ndim == 2:
        array = array[None]
    if array.ndim != ndim or min(array.shape) < 1:
        axes = "2D" if ndim == 2 else "3D (Z, Y, X)"
        raise InvalidInputError(f"the blur kernel must be a {axes} array, got shape {np.shape(kernel)}")
    check_kernel_size(array.shape, "the blur kernel")
    if not np.all(np.isfinite(array)):
        raise InvalidInputError("the blur kernel contains NaN or infinite values")
    if np.any(array < 0):
        raise InvalidInputError(
            "the blur kernel has negative values: a PSF is non-negative (subtract the background and clip at 0)"
        )
    with np.errstate(over="ignore"):  # an overflowing sum is refused below
        total = array.sum()
    if not total > 0:
        raise InvalidInputError("the blur kernel is all zero: it must have a positive sum")
    if not math.isfinite(total):
        raise InvalidInputError(
            f"the blur kernel's sum overflows (values up to {array.max():.3g}): rescale it first, "
            "e.g. divide it by its maximum"
        )
    return torch.from_numpy(array / total)
