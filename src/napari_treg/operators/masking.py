"""Pointwise operators: inpainting (a mask of missing pixels) and denoising (identity)."""

from __future__ import annotations

import numpy as np
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators.base import DeviceCopies, LinearOperator, as_numpy, drop_leading_singletons


class Inpainting(LinearOperator):
    """Missing pixels: ``A x`` keeps the observed pixels and zeroes the missing ones.

    Parameters
    ----------
    mask : array (H, W), also (1, H, W) or (H, W, 1)
        True, or a label > 0 (a napari Labels layer), marks a *missing* pixel.
    """

    def __init__(self, mask: np.ndarray | torch.Tensor):
        self._set_missing(validate_mask(mask))

    def _set_missing(self, missing: torch.Tensor) -> None:
        self.missing = missing
        self._keep = DeviceCopies((~missing).to(torch.float64))

    @classmethod
    def _of_checked(cls, missing: torch.Tensor) -> Inpainting:
        """An operator for a mask derived from a checked one (a tile of it may be all missing)."""
        operator = cls.__new__(cls)
        operator._set_missing(missing)
        return operator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_image_hw(tuple(x.shape[-2:]))
        return x * self._keep.like(x)

    adjoint = forward
    measured = forward  # the missing pixels of a measurement hold no data

    def check_image_hw(self, image_hw: tuple[int, int]) -> None:
        if tuple(image_hw) != tuple(self.missing.shape):
            h, w = self.missing.shape
            raise InvalidInputError(
                f"the inpainting mask is {h}x{w} but the image is {image_hw[0]}x{image_hw[1]}: "
                "they must have the same height and width"
            )

    def padded(self, pad_h: int, pad_w: int) -> Inpainting:
        array = np.pad(self.missing.numpy(), ((0, pad_h), (0, pad_w)), mode="symmetric")
        return self._of_checked(torch.from_numpy(array))

    def cropped(self, rows: slice, cols: slice) -> LinearOperator:
        """The operator of the tile ``[rows, cols]``: its part of the mask.

        A tile with nothing missing is :class:`Denoising`; a tile with everything missing is
        allowed (the prior fills it in; overlapping neighbours carry the measured context).
        """
        missing = self.missing[rows, cols].clone()
        return self._of_checked(missing) if bool(missing.any()) else Denoising()

    @property
    def missing_fraction(self) -> float:
        return float(self.missing.float().mean())

    def __repr__(self) -> str:
        h, w = self.missing.shape
        return f"Inpainting(mask={h}x{w}, missing={100 * self.missing_fraction:.1f}%)"


class Denoising(LinearOperator):
    """The identity: the measurement is the image plus noise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    adjoint = forward

    def __repr__(self) -> str:
        return "Denoising()"


def validate_mask(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A 2D boolean tensor, True = missing; refuses masks that hide nothing or everything."""
    array = np.asarray(as_numpy(mask, "mask"))
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"the inpainting mask must be boolean or labels, got dtype {array.dtype}")
    array = drop_leading_singletons(array)
    if array.ndim == 3 and array.shape[-1] == 1:  # (H, W, 1): a one-channel image, like (1, H, W)
        array = array[..., 0]
    if array.ndim != 2:
        raise InvalidInputError(f"the inpainting mask must be 2D (H, W), got shape {np.shape(mask)}")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise InvalidInputError("the inpainting mask contains NaN or infinite values")
    missing = array > 0
    if not missing.any():
        raise InvalidInputError(
            "the inpainting mask marks no pixel as missing (label > 0 = missing): "
            "paint the missing region, or use Denoising()"
        )
    if missing.all():
        raise InvalidInputError("the inpainting mask marks every pixel as missing: nothing is measured")
    return torch.from_numpy(missing.copy())
