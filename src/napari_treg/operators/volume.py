"""A 3-D blur of a whole z-stack by a point spread function, and its exact adjoint.

The stack's planes lie on the batch axis: :class:`VolumeBlur` acts on ``(Z, C, H, W)`` and mixes
neighbouring planes, so it is the one operator that couples planes (``couples_planes``); the
engine then solves the stack as one volume. Every axis, z included, uses the project's boundary
rule (half-sample symmetric mirroring, :mod:`.convolution`), so ``A x`` equals
``scipy.ndimage.convolve(x, psf, mode="reflect")`` per channel (odd PSF sides; even sides are
centred at ``k // 2``, scipy's ``origin=-1``). The padding is a gather and its adjoint a
scatter-add through the same index map; the convolution is torch's ``conv3d`` and its adjoint
the transposed convolution (a full ``conv3d`` by the flipped kernel): the operator is exactly
linear and exactly adjoint (``tests/operators/test_volume_blur.py``). In float64 (the residuals and
checks of the provenance) both run by FFT instead, whose memory is a few copies of the volume: torch's
direct float64 ``conv3d`` unfolds every voxel's neighbourhood (:func:`uses_fft`). It is written here rather
than taken from a library because no library offers a 3-D convolution with this boundary
together with its exact adjoint.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from napari_treg.errors import InvalidInputError
from napari_treg.operators.base import DeviceCopies, LinearOperator
from napari_treg.operators.blur import validate_psf
from napari_treg.operators.convolution import (
    fft_convolve_full,
    fft_correlate_valid,
    mirror_index,
    scatter_axis,
    uses_fft,
)


class VolumeBlur(LinearOperator):
    """Convolution of a z-stack with a 3-D PSF ``(Z, Y, X)``, e.g. a bead stack.

    The PSF is normalised to sum 1; its centre is voxel ``(kz // 2, ky // 2, kx // 2)`` (as
    :class:`~napari_treg.operators.KernelBlur` centres 2-D kernels). It must be finite and
    non-negative with a positive sum; a 2-D PSF is a volume of one plane.

    Parameters
    ----------
    psf : array ``(Z, Y, X)``
        The point spread function, sampled at the stack's voxel size.
    voxel_size : (float, float, float), optional
        ``(z, y, x)`` size of a PSF voxel (any one unit, e.g. micrometres); the engine refuses a
        stack whose voxel size differs (see :func:`napari_treg.operators.psf.match_voxel_size`).
    source : str, optional
        Where the PSF comes from (a modelled PSF's parameters), shown in ``repr`` and the provenance.
    """

    def __init__(
        self,
        psf: np.ndarray | torch.Tensor,
        voxel_size: tuple[float, float, float] | None = None,
        *,
        source: str | None = None,
    ):
        self.psf = validate_psf(psf, ndim=3)
        self.source = source
        self.voxel_size = None if voxel_size is None else check_voxel_size(voxel_size, "the PSF's voxel size")
        self._flipped = DeviceCopies(torch.flip(self.psf, dims=(0, 1, 2)))  # convolution = flipped correlation
        self.volume_planes: int | None = None  # planes of each volume on the batch axis; None: the whole batch

    @property
    def couples_planes(self) -> bool:
        return True

    def system_planes(self, batch: int) -> int:
        return batch if self.volume_planes is None else self.volume_planes

    def stacked(self, depth: int) -> VolumeBlur:
        """This blur for volumes of ``depth`` planes one after another on the batch axis, each blurred alone."""
        if int(depth) < 1:
            raise InvalidInputError(f"a volume has at least one plane, got depth {depth!r}")
        volumes = copy.copy(self)
        volumes.volume_planes = int(depth)
        return volumes

    @property
    def depth(self) -> int:
        """The PSF's extent in z, in planes."""
        return int(self.psf.shape[0])

    @property
    def lateral_radius(self) -> int:
        """How far, in pixels, the PSF reaches in y or x from its centre (the least tile overlap)."""
        ky, kx = self.psf.shape[1:]
        return int(max(ky - 1 - ky // 2, ky // 2, kx - 1 - kx // 2, kx // 2))

    def check_depth(self, planes: int) -> None:
        """Raise InvalidInputError if the stack has fewer planes than the PSF."""
        if self.depth > planes:
            raise InvalidInputError(
                f"the PSF has {self.depth} planes, more than the stack's {planes}: crop the PSF in z "
                f"to at most {planes} planes around its centre, or restore a taller stack"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._flipped.like(x)
        padded = mirror_pad_3d(as_volume(x, self.system_planes(len(x))), kernel.shape)
        if uses_fft(x):
            return as_planes(fft_correlate_valid(padded, kernel))
        return as_planes(F.conv3d(padded, channel_weight(kernel, x.shape[1]), groups=x.shape[1]))

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        kernel = self._flipped.like(y)
        depth = self.system_planes(len(y))
        volumes = as_volume(y, depth)
        if uses_fft(y):
            spread = fft_convolve_full(volumes, kernel)
        else:
            # conv_transpose3d(y, k) = conv3d(y zero-padded by the kernel size - 1, k flipped); faster on CPU
            reach = [side - 1 for side in reversed(kernel.shape) for _ in (0, 1)]
            flipped = torch.flip(kernel, dims=(0, 1, 2))
            spread = F.conv3d(F.pad(volumes, reach), channel_weight(flipped, y.shape[1]), groups=y.shape[1])
        return as_planes(mirror_pad_3d_adjoint(spread, kernel.shape, tuple(y.shape[-2:]), depth))

    def __repr__(self) -> str:
        kz, ky, kx = self.psf.shape
        voxel = "" if self.voxel_size is None else f", voxel_size={self.voxel_size}"
        source = "" if self.source is None else f", source={self.source!r}"
        stacked = "" if self.volume_planes is None else f", stacked volumes of {self.volume_planes} planes"
        return f"VolumeBlur(psf={kz}x{ky}x{kx}{voxel}{source}{stacked})"


def as_volume(planes: torch.Tensor, depth: int) -> torch.Tensor:
    """``(N * depth, C, H, W)`` -> ``(N, C, depth, H, W)``: each run of ``depth`` planes becomes a volume of conv3d."""
    if len(planes) % depth:
        raise InvalidInputError(f"{len(planes)} planes are not whole volumes of {depth} planes")
    return planes.unflatten(0, (-1, depth)).transpose(1, 2)


def as_planes(volumes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`as_volume`."""
    return volumes.transpose(1, 2).flatten(0, 1).contiguous()


def channel_weight(kernel: torch.Tensor, channels: int) -> torch.Tensor:
    return kernel.expand(channels, 1, *kernel.shape).contiguous()


def _axis_indices(kernel_shape, sizes, device) -> list[torch.Tensor]:
    return [mirror_index(-(k // 2), n + k - 1 - k // 2, n, device) for k, n in zip(kernel_shape, sizes)]


def mirror_pad_3d(volume: torch.Tensor, kernel_shape) -> torch.Tensor:
    """Mirror-pad ``(N, C, Z, H, W)`` by the kernel's reach on every axis (a gather)."""
    for dim, index in zip((2, 3, 4), _axis_indices(kernel_shape, volume.shape[2:], volume.device)):
        volume = torch.index_select(volume, dim, index)
    return volume


def mirror_pad_3d_adjoint(padded: torch.Tensor, kernel_shape, hw: tuple[int, int], planes: int) -> torch.Tensor:
    """Adjoint of :func:`mirror_pad_3d`: scatter-add the padded volumes back onto ``planes x hw`` each."""
    sizes = (planes, *hw)
    for dim, index, size in reversed(list(zip((2, 3, 4), _axis_indices(kernel_shape, sizes, padded.device), sizes))):
        padded = scatter_axis(padded, index, dim, size)
    return padded


def check_voxel_size(value, what: str) -> tuple[float, float, float]:
    """A ``(z, y, x)`` voxel size of three positive finite numbers."""
    try:
        sizes = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{what} must be three numbers (z, y, x), got {value!r}") from None
    if len(sizes) != 3 or not all(np.isfinite(s) and s > 0 for s in sizes):
        raise InvalidInputError(f"{what} must be three positive finite numbers (z, y, x), got {value!r}")
    return sizes  # type: ignore[return-value]
