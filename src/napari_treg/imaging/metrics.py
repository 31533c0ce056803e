"""How good a result is: its residual against the measurement, and PSNR/SSIM against a clean reference.

Plain functions of arrays and tensors, used by the engine (every result's ``residual``),
the widget (PSNR/SSIM against a reference layer), and callable from the API and batch scripts.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators import LinearOperator
from napari_treg.solver.noise_weights import NoiseVariance


def residual_sums(operator: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``[||A x - y||^2, ||y||^2, m]`` over the ``m`` measured values, in model units (float64).

    Values the operator does not measure (an inpainting mask's missing pixels) do not count,
    whatever the measurement holds there.
    """
    y = operator.measured(y.double())
    error = float(((operator.forward(x.double()) - y) ** 2).sum())
    count = int(torch.count_nonzero(operator.measured(torch.ones_like(y))))
    return np.array([error, float((y**2).sum()), count])


def weighted_residual(operator: LinearOperator, x: torch.Tensor, y: torch.Tensor, variance: NoiseVariance) -> float:
    """The RMS residual in noise units per value, ``sqrt(mean((A x - y)^2 / var(A x)))`` over the measured
    values (about 1 for a result consistent with a measurement of per-value noise ``variance``)."""
    ax = operator.forward(x.double())
    mask = operator.measured(torch.ones_like(y.double())) != 0
    ratio = (ax - y.double()) ** 2 / variance.of(ax)
    return float(ratio[mask].mean()) ** 0.5 if bool(mask.any()) else 0.0


def residual_summary(sums: np.ndarray, noise: float | None) -> dict:
    """``residual`` = ``||A x - y|| / ||y||``; ``residual_over_noise`` = RMS residual / noise sigma.

    ``residual_over_noise`` is about 1 for a result consistent with the measurement at its noise
    level, and None when the noise level is not given.
    """
    error, norm, count = sums
    return {
        "residual": math.sqrt(error / norm) if norm > 0 else 0.0,
        "noise": noise,
        "residual_over_noise": math.sqrt(error / count) / noise if noise and count else None,
    }


def ground_truth_metrics(result: np.ndarray, reference: np.ndarray, rgb: bool) -> dict[str, float]:
    """PSNR (dB) and SSIM of ``result`` against a clean ``reference`` of the same shape.

    The data range is the reference's; SSIM is averaged over the planes of a stack.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    result = np.asarray(result, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    if result.shape != reference.shape:
        raise InvalidInputError(
            f"the reference is {reference.shape} but the result is {result.shape}: "
            "choose the clean image the measurement was simulated from"
        )
    data_range = float(reference.max() - reference.min()) or 1.0
    identical = bool(np.array_equal(result, reference))
    psnr = math.inf if identical else float(peak_signal_noise_ratio(reference, result, data_range=data_range))
    shape = result.shape[-3:] if rgb else result.shape[-2:]
    side = min(shape[:2])
    win = min(7, side if side % 2 else side - 1)
    ssims = []
    for ref_plane, res_plane in zip(reference.reshape(-1, *shape), result.reshape(-1, *shape)):
        if win < 3:
            break
        ssims.append(
            structural_similarity(
                ref_plane, res_plane, data_range=data_range, win_size=win, channel_axis=-1 if rgb else None
            )
        )
    return {"psnr": psnr, "ssim": float(np.mean(ssims)) if ssims else math.nan}


def format_metrics(metrics: dict) -> str:
    """``"PSNR 27.31 dB, SSIM 0.812"``."""
    parts = []
    if "psnr" in metrics:
        parts.append(f"PSNR {metrics['psnr']:.2f} dB")
    if "ssim" in metrics and not math.isnan(metrics["ssim"]):
        parts.append(f"SSIM {metrics['ssim']:.3f}")
    return ", ".join(parts)
