"""Super-resolution: anti-aliasing filter followed by decimation by an integer factor."""

from __future__ import annotations

import math

import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators.base import DeviceCopies, LinearOperator, as_positive_number
from napari_treg.operators.convolution import correlate_axis, correlate_axis_adjoint

FILTERS = ("bicubic", "box", "gaussian")
#: the largest super-resolution factor (a factor-32 restored image already has 1024 pixels per measured one)
MAX_FACTOR = 32


def cubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic convolution kernel (``a = -0.5``, as in bicubic resizing)."""
    t = t.abs()
    near = (a + 2) * t**3 - (a + 3) * t**2 + 1
    far = a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def downsampling_taps(factor: int, filter: str) -> tuple[torch.Tensor, int]:
    """Taps and first offset of the filter that makes one low-resolution pixel.

    Low-resolution pixel ``j`` covers high-resolution pixels ``factor*j .. factor*j+factor-1``
    and is centred at ``factor*j + (factor-1)/2``; it is
    ``sum_m taps[m] * x[factor*j + offset + m]``.
    """
    centre = (factor - 1) / 2
    if filter == "box":
        return torch.full((factor,), 1.0 / factor, dtype=torch.float64), 0
    if filter == "bicubic":
        support = 2.0 * factor  # 4 * factor taps
        profile = lambda d: cubic(d / factor)  # noqa: E731
    else:  # gaussian, sigma = factor / 2 low-resolution... in high-resolution pixels
        sigma = factor / 2.0
        support = 3.0 * sigma
        profile = lambda d: torch.exp(-0.5 * (d / sigma) ** 2)  # noqa: E731
    first = math.floor(centre - support) + 1
    last = math.ceil(centre + support) - 1
    offsets = torch.arange(first, last + 1, dtype=torch.float64)
    taps = profile(offsets - centre)
    return taps / taps.sum(), first


class SuperResolution(LinearOperator):
    """Downsampling by an integer ``factor`` after an anti-aliasing filter.

    Parameters
    ----------
    factor : int
        Downsampling factor (>= 1); the restored image is ``factor`` times larger.
    filter : {"bicubic", "box", "gaussian"}
        Anti-aliasing filter: bicubic (Keys, a = -0.5, ``4 * factor`` taps, as in
        the paper), box (pixel binning, as a camera with larger pixels), or Gaussian
        (sigma = factor / 2).
    """

    def __init__(self, factor: int = 4, filter: str = "bicubic"):
        self.factor = as_positive_number(factor, "SuperResolution factor", integer=True)
        if self.factor > MAX_FACTOR:
            raise InvalidInputError(f"SuperResolution factor must be at most {MAX_FACTOR}, got {factor!r}")
        if filter not in FILTERS:
            raise InvalidInputError(f"unknown SuperResolution filter {filter!r}; choose one of {FILTERS}")
        self.filter = filter
        taps, self._offset = downsampling_taps(self.factor, filter)
        self._taps = DeviceCopies(taps)

    @property
    def upscale(self) -> int:
        """The restored image is ``factor`` times larger than the measurement."""
        return self.factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image_hw(tuple(x.shape[-2:]))
        h, w = self.measurement_hw(tuple(x.shape[-2:]))
        x = correlate_axis(x, self._taps.like(x), self._offset, self.factor, h, dim=2)
        return correlate_axis(x, self._taps.like(x), self._offset, self.factor, w, dim=3)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        h, w = self.image_hw(tuple(y.shape[-2:]))
        y = correlate_axis_adjoint(y, self._taps.like(y), self._offset, self.factor, w, dim=3)
        return correlate_axis_adjoint(y, self._taps.like(y), self._offset, self.factor, h, dim=2)

    def measurement_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return image_hw[0] // self.factor, image_hw[1] // self.factor

    def image_hw(self, measurement_hw: tuple[int, int]) -> tuple[int, int]:
        return measurement_hw[0] * self.factor, measurement_hw[1] * self.factor

    def check_image_hw(self, image_hw: tuple[int, int]) -> None:
        h, w = image_hw
        if h < self.factor or w < self.factor:
            raise InvalidInputError(
                f"image size {h}x{w} is smaller than the super-resolution factor {self.factor}: "
                f"the image needs at least {self.factor}x{self.factor} pixels (better a multiple of that), "
                "or use a smaller factor"
            )
        if h % self.factor or w % self.factor:
            raise InvalidInputError(
                f"image size {h}x{w} is not divisible by the super-resolution factor "
                f"{self.factor}: crop it to {h - h % self.factor}x{w - w % self.factor}"
            )

    def __repr__(self) -> str:
        return f"SuperResolution(factor={self.factor}, filter={self.filter!r})"
