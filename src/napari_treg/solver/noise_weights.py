"""Per-value noise: the measurement's variance as a function of its noise-free value, in model units.

For photon-limited data (``napari_treg.noise.PoissonGaussian``) the variance of a measured value
grows with the signal. In model units it is affine, clipped below at the read-noise floor:

    var(v) = max(slope * v + intercept, floor).

Every data step weighs a measured value by ``1 / var``. The solvers take the weights relative to
the floor, ``W = floor / var`` (in (0, 1]), so that a proximal weight ``lam = floor / tau^2`` plays
the part ``sigma^2 / tau^2`` plays for one Gaussian level, and ``||W A|| <= 1`` keeps the
conjugate-gradient iteration bounds of :mod:`.posterior` valid. The variance is always taken at
the current estimate ``A x`` (never at ``y``, which is noisy at low counts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseVariance:
    """``var(v) = max(slope v + intercept, floor)`` per measured value ``v`` (model units, floor > 0)."""

    slope: float
    intercept: float
    floor: float

    def of(self, values: torch.Tensor) -> torch.Tensor:
        """The variance of each value of ``values`` (a noise-free estimate ``A x``)."""
        return (self.slope * values + self.intercept).clamp_min(self.floor)

    def weights(self, values: torch.Tensor) -> torch.Tensor:
        """``floor / var(values)``: each value's data weight relative to the floor's, in (0, 1]."""
        return self.floor / self.of(values)

    @property
    def floor_sd(self) -> float:
        """The standard deviation at the floor: the reference noise level of the weighted solves."""
        return math.sqrt(self.floor)

    def as_dict(self) -> dict[str, float]:
        return {"slope": self.slope, "intercept": self.intercept, "floor": self.floor}
