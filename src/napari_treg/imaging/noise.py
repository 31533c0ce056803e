"""The measurement's noise level, estimated from the measurement itself.

The text-conflict check and the ensembles need the noise sigma of ``y = A x + n``. When the
user does not give it, it is estimated robustly: the finest diagonal Haar detail of each
2x2 block, ``d = (y00 - y01 - y10 + y11) / 2``, has variance sigma^2 for white noise and is
near zero on smooth image content, so ``sigma = median(|d|) / 0.6745`` (Donoho's MAD rule,
the estimator of ``skimage.restoration.estimate_sigma`` on the finest Haar band, written out
here so that it also respects an inpainting mask: blocks with an unmeasured pixel are left out).
Textured content makes it an overestimate; that is why a given noise level always wins.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators import LinearOperator

#: median(|N(0, 1)|): turns the median absolute detail into a standard deviation
MAD_TO_SIGMA = 0.6744897501960817
#: the fewest complete 2x2 blocks a measurement needs for an estimate
MIN_BLOCKS = 16


def estimate_noise(planes: np.ndarray, operator: LinearOperator | None = None) -> float:
    """The noise sigma of measurement planes ``(N, C, h, w)`` (same units as the planes).

    With an ``operator``, values it does not measure (``operator.measured``) are left out.
    Raises InvalidInputError when fewer than 16 complete 2x2 blocks are measured.
    """
    y = np.asarray(planes, dtype=np.float64)
    if y.ndim != 4:
        raise InvalidInputError(f"noise estimation needs planes (N, C, h, w), got shape {y.shape}")
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    y = y[..., :h, :w]
    detail = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2
    complete = blocks_measured(operator, y)
    values = np.abs(detail[complete]) if complete is not None else np.abs(detail).ravel()
    if values.size < MIN_BLOCKS:
        raise InvalidInputError(
            f"too few measured pixels to estimate the noise level ({values.size} 2x2 blocks, at least "
            f"{MIN_BLOCKS} needed): give the noise sigma instead"
        )
    return float(np.median(values) / MAD_TO_SIGMA)


def blocks_measured(operator: LinearOperator | None, y: np.ndarray) -> np.ndarray | None:
    """A boolean map of the 2x2 blocks whose four values are all measured (None: all are)."""
    if operator is None:
        return None
    ones = torch.ones(y.shape, dtype=torch.float64)
    measured = operator.measured(ones).numpy() != 0
    if measured.all():
        return None
    return measured[..., 0::2, 0::2] & measured[..., 0::2, 1::2] & measured[..., 1::2, 0::2] & measured[..., 1::2, 1::2]
