"""Convolution with a mirror boundary, and its exact adjoint.

Boundary rule (the same for every blur and for super-resolution): the image is
extended by half-sample symmetric mirroring (``d c b a | a b c d | d c b a``,
numpy's ``"symmetric"`` mode), repeated periodically for kernels larger than
the image. Padding is a gather through an index map, so its adjoint is the
scatter-add through the same map, and the whole operator stays exactly linear
and exactly adjoint.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def mirror_index(start: int, stop: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices into an axis of length ``size`` for positions ``start .. stop-1``.

    Positions outside ``[0, size)`` are mirrored (half-sample symmetric).
    """
    positions = torch.arange(start, stop, device=device)
    period = 2 * size
    folded = torch.remainder(positions, period)
    return torch.where(folded < size, folded, period - 1 - folded)


def gather_axis(x: torch.Tensor, index: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` taken at ``index`` along ``dim`` (the padding step)."""
    return torch.index_select(x, dim, index)


def scatter_axis(y: torch.Tensor, index: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Adjoint of :func:`gather_axis`: add ``y`` back onto an axis of length ``size``."""
    shape = list(y.shape)
    shape[dim] = size
    out = torch.zeros(shape, dtype=y.dtype, device=y.device)
    return out.index_add_(dim, index, y)


def correlate_axis(
    x: torch.Tensor, taps: torch.Tensor, offset: int, stride: int, out_len: int, dim: int
) -> torch.Tensor:
    """``out[j] = sum_m taps[m] * x[stride * j + offset + m]`` along ``dim`` (mirror boundary).

    ``x`` is ``(B, C, H, W)`` and ``dim`` is 2 or 3.
    """
    size = x.shape[dim]
    stop = stride * (out_len - 1) + offset + taps.numel()
    index = mirror_index(offset, stop, size, x.device)
    padded = gather_axis(x, index, dim)
    return _strided_correlation(padded, taps.to(x), stride, dim)


def correlate_axis_adjoint(
    y: torch.Tensor, taps: torch.Tensor, offset: int, stride: int, size: int, dim: int
) -> torch.Tensor:
    """Adjoint of :func:`correlate_axis` mapping back to an axis of length ``size``."""
    out_len = y.shape[dim]
    stop = stride * (out_len - 1) + offset + taps.numel()
    index = mirror_index(offset, stop, size, y.device)
    padded = _strided_correlation_adjoint(y, taps.to(y), stride, dim)
    return scatter_axis(padded, index, dim, size)


def _float32_on_cpu(conv):
    """Run a float16 convolution on the CPU in float32 and round the result back to float16.

    For float16 on the CPU torch 2.13 picks its generic ``Slow2d`` kernel (float32 and bfloat16 go
    to oneDNN; ``torch._C._select_conv_backend`` on an AMD EPYC), and a float16 1x25 depthwise
    convolution was seen running past 900 s on a Sapphire Rapids-class CPU (issue 33). float32
    gives the same values up to float16 rounding.
    """

    @functools.wraps(conv)
    def run(x: torch.Tensor, taps: torch.Tensor, *args):
        if x.dtype == torch.float16 and x.device.type == "cpu":
            return conv(x.float(), taps.float(), *args).to(torch.float16)
        return conv(x, taps, *args)

    return run


@_float32_on_cpu
def _strided_correlation(x: torch.Tensor, taps: torch.Tensor, stride: int, dim: int) -> torch.Tensor:
    channels = x.shape[1]
    weight = _axis_weight(taps, channels, dim)
    step = (stride, 1) if dim == 2 else (1, stride)
    return F.conv2d(x, weight, stride=step, groups=channels)


@_float32_on_cpu
def _strided_correlation_adjoint(y: torch.Tensor, taps: torch.Tensor, stride: int, dim: int) -> torch.Tensor:
    channels = y.shape[1]
    weight = _axis_weight(taps, channels, dim)
    step = (stride, 1) if dim == 2 else (1, stride)
    return F.conv_transpose2d(y, weight, stride=step, groups=channels)


def _axis_weight(taps: torch.Tensor, channels: int, dim: int) -> torch.Tensor:
    column = taps.reshape((1, 1, -1, 1) if dim == 2 else (1, 1, 1, -1))
    return column.expand(channels, -1, -1, -1).contiguous()


@_float32_on_cpu
def correlate_2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Same-size correlation with a 2D kernel ``(kh, kw)`` centred at ``(kh // 2, kw // 2)``."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    rows = mirror_index(-(kh // 2), h + kh - 1 - kh // 2, h, x.device)
    cols = mirror_index(-(kw // 2), w + kw - 1 - kw // 2, w, x.device)
    padded = gather_axis(gather_axis(x, rows, 2), cols, 3)
    if uses_fft(x):
        return fft_correlate_valid(padded, kernel.to(x))
    weight = kernel.to(x).expand(x.shape[1], 1, kh, kw).contiguous()
    return F.conv2d(padded, weight, groups=x.shape[1])


@_float32_on_cpu
def correlate_2d_adjoint(y: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`correlate_2d`."""
    kh, kw = kernel.shape
    h, w = y.shape[-2:]
    rows = mirror_index(-(kh // 2), h + kh - 1 - kh // 2, h, y.device)
    cols = mirror_index(-(kw // 2), w + kw - 1 - kw // 2, w, y.device)
    if uses_fft(y):
        padded = fft_convolve_full(y, kernel.to(y))
    else:
        weight = kernel.to(y).expand(y.shape[1], 1, kh, kw).contiguous()
        padded = F.conv_transpose2d(y, weight, groups=y.shape[1])
    return scatter_axis(scatter_axis(padded, cols, 3, w), rows, 2, h)


def uses_fft(x: torch.Tensor) -> bool:
    """Whether a 2-D or 3-D kernel convolution runs by FFT: in float64 (the residuals and the
    provenance), where torch's direct convolution on a CPU unfolds every pixel's neighbourhood
    (``kh * kw`` copies of the image: 358 MiB above start for one 512x512 RGB image and a 13x13
    kernel, 5.6 s, against 51 MiB and 0.5 s in float32; 1.8 GB for 16 planes of 64x64 and a
    7x13x13 PSF, docs/validation.md "Cost of a volume solve")."""
    return x.dtype == torch.float64


def fft_correlate_valid(padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The 'valid' correlation of ``padded`` with ``kernel`` over its last ``kernel.ndim`` axes by FFT
    (``conv2d`` / ``conv3d`` per channel): the circular correlation over the padded size has no
    wrap-around in its first ``n - k + 1`` samples per axis."""
    dims = tuple(range(-kernel.ndim, 0))
    shape = tuple(padded.shape[-kernel.ndim :])
    spectrum = torch.fft.rfftn(padded, dim=dims) * torch.fft.rfftn(kernel, s=shape).conj()
    full = torch.fft.irfftn(spectrum, s=shape, dim=dims)
    return full[(..., *(slice(0, n - k + 1) for n, k in zip(shape, kernel.shape)))]


def fft_convolve_full(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The full convolution of ``x`` with ``kernel`` over its last ``kernel.ndim`` axes by FFT (the
    adjoint of :func:`fft_correlate_valid`): each axis ``n + k - 1`` long, no wrap-around."""
    dims = tuple(range(-kernel.ndim, 0))
    shape = tuple(n + k - 1 for n, k in zip(x.shape[-kernel.ndim :], kernel.shape))
    spectrum = torch.fft.rfftn(x, s=shape, dim=dims) * torch.fft.rfftn(kernel, s=shape)
    return torch.fft.irfftn(spectrum, s=shape, dim=dims)
