"""A measurement with some of its values held out: ``A`` followed by a mask on the measurement.

``HeldOut(A, hidden)`` measures what ``A`` measures except the values ``hidden`` marks (a
boolean ``(h, w)`` map over the measurement's pixels, the same for every channel and plane):
``forward(x) = keep * A x`` and ``adjoint(y) = A^T (keep * y)``, so a restoration with it never
sees the held-out values. The ensemble's held-out check (:mod:`napari_treg.engine.holdout`)
restores with it and compares its predictions with the values it hid.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators.base import DeviceCopies, LinearOperator


class HeldOut(LinearOperator):
    """``A`` with the measurement values ``hidden`` (True = held out) dropped."""

    def __init__(self, inner: LinearOperator, hidden: np.ndarray):
        hidden = np.asarray(hidden, dtype=bool)
        if hidden.ndim != 2:
            raise InvalidInputError(f"the held-out map must be 2D (h, w), got shape {hidden.shape}")
        self.inner = inner
        self.hidden = hidden
        self._keep = DeviceCopies(torch.from_numpy(~hidden).to(torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.forward(x) * self._keep.like(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.adjoint(y * self._keep.like(y))

    def measured(self, y: torch.Tensor) -> torch.Tensor:
        return self.inner.measured(y) * self._keep.like(y)

    def measurement_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        return self.inner.measurement_hw(image_hw)

    def image_hw(self, measurement_hw: tuple[int, int]) -> tuple[int, int]:
        return self.inner.image_hw(measurement_hw)

    @property
    def upscale(self) -> int:
        return self.inner.upscale

    @property
    def couples_planes(self) -> bool:
        return self.inner.couples_planes

    def system_planes(self, batch: int) -> int:
        return self.inner.system_planes(batch)

    def stacked(self, depth: int) -> LinearOperator:
        return HeldOut(self.inner.stacked(depth), self.hidden)

    def check_image_hw(self, image_hw: tuple[int, int]) -> None:
        self.inner.check_image_hw(image_hw)
        if tuple(self.inner.measurement_hw(image_hw)) != self.hidden.shape:
            h, w = self.hidden.shape
            raise InvalidInputError(f"the held-out map is {h}x{w} but the measurement of this image is not")

    def padded(self, pad_h: int, pad_w: int) -> LinearOperator:
        """The padded inner operator, the map mirrored as the engine mirrors the measurement."""
        if pad_h == 0 and pad_w == 0:
            return self
        image = self.inner.image_hw(self.hidden.shape)
        h, w = self.inner.measurement_hw((image[0] + pad_h, image[1] + pad_w))
        extra = ((0, h - self.hidden.shape[0]), (0, w - self.hidden.shape[1]))
        return HeldOut(self.inner.padded(pad_h, pad_w), np.pad(self.hidden, extra, mode="symmetric"))

    @property
    def held_out(self) -> int:
        """How many measurement pixels are held out."""
        return int(self.hidden.sum())

    def __repr__(self) -> str:
        return f"HeldOut({self.inner!r}, held_out={self.held_out} of {self.hidden.size})"
