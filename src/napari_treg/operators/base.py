"""Linear forward operators A and their adjoints, on ``(B, C, H, W)`` tensors.

Every operator maps an image ``x`` to a measurement ``y = A x`` and back with
the exact adjoint ``A^T``; ``tests/operators/test_operators.py`` proves
``<A x, y> = <x, A^T y>`` for each of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from napari_treg.errors import InvalidInputError


class LinearOperator(ABC):
    """A linear measurement model ``y = A x`` acting on the last two axes."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``A`` to images ``(B, C, H, W)``."""

    @abstractmethod
    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply ``A^T`` to measurements ``(B, C, h, w)``."""

    def measurement_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        """Size of ``A x`` for an image of size ``image_hw``."""
        return image_hw

    def image_hw(self, measurement_hw: tuple[int, int]) -> tuple[int, int]:
        """Size of the image that a measurement of size ``measurement_hw`` comes from."""
        return measurement_hw

    @property
    def couples_planes(self) -> bool:
        """Whether ``A`` mixes the planes of the batch axis (a 3-D blur of a z-stack); False: per plane."""
        return False

    def system_planes(self, batch: int) -> int:
        """Planes of a batch of ``batch`` that form one linear system (one volume): ``batch`` when ``A``
        couples planes, else 1 (each plane its own)."""
        return batch if self.couples_planes else 1

    def stacked(self, depth: int) -> LinearOperator:
        """The operator for volumes of ``depth`` planes one after another on the batch axis, each measured
        alone (the samples of an ensemble solved together); an operator that works per plane is its own."""
        if self.couples_planes:
            raise NotImplementedError(f"{type(self).__name__} cannot measure stacked volumes")
        return self

    @property
    def upscale(self) -> int:
        """How many times larger, per image axis, the restored image is than the measurement (1 here)."""
        return 1

    def padded(self, pad_h: int, pad_w: int) -> LinearOperator:
        """The operator for an image padded by ``pad_h`` rows and ``pad_w`` columns.

        Padding is added at the bottom and right (mirror), in image pixels.
        Operators whose parameters do not depend on the image size return self.
        """
        return self

    def measured(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` with the values this operator does not measure set to 0 (all are measured here)."""
        return y

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``."""
        return self.adjoint(self.forward(x))

    def check_image_hw(self, image_hw: tuple[int, int]) -> None:
        """Raise :class:`InvalidInputError` if an image of this size cannot be measured."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)


class DeviceCopies:
    """A constant tensor of an operator, copied to each device and dtype once, on first use.

    Copying a CPU tensor to a GPU makes the host wait for the GPU; done inside the sampler
    loop it would stall every data-consistency step. This makes that copy once per run.
    """

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self._copies: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """The constant on ``x``'s device, in ``x``'s dtype."""
        key = (x.device, x.dtype)
        copy = self._copies.get(key)
        if copy is None:
            copy = self._copies[key] = self.tensor.to(device=x.device, dtype=x.dtype)
        return copy


def as_positive_number(value: float, name: str, *, integer: bool = False) -> float:
    """Validate an operator parameter: finite and > 0 (and an integer if asked)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise InvalidInputError(f"{name} must be a positive finite number, got {value!r}")
    if integer and number != int(number):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    return int(number) if integer else number


def exact(number: float) -> str:
    """A float as ``repr`` writes it (round-trips exactly), without a trailing ``.0``: 5.0 -> "5"."""
    text = repr(float(number))
    return text[:-2] if text.endswith(".0") else text


def as_numpy(value: object, name: str, masked_hint: str | None = None) -> object:
    """``value`` as NumPy sees it: torch tensors converted, masked arrays unwrapped only when nothing is masked.

    Raises InvalidInputError for a tensor NumPy cannot hold (bfloat16, sparse, ...) and for a masked
    array with masked values (their mask would be ignored); ``masked_hint`` says what to do instead.
    Anything else is returned unchanged for the caller to validate.
    """
    if isinstance(value, torch.Tensor):
        try:
            return value.detach().cpu().numpy()
        except (TypeError, RuntimeError) as error:  # bfloat16, quantised, sparse, meta ...
            raise InvalidInputError(
                f"{name} is a torch tensor of dtype {value.dtype} that NumPy cannot hold ({error}): "
                f"convert it first, e.g. {name}.float()"
            ) from None
    if isinstance(value, np.ma.MaskedArray):
        if np.ma.is_masked(value):
            hint = masked_hint or f"fill them first, e.g. np.ma.filled({name}, 0)"
            raise InvalidInputError(
                f"{name} is a masked array with {int(np.ma.count_masked(value))} masked value(s), "
                f"which would be ignored: {hint}"
            )
        return np.ma.getdata(value)
    return value


def drop_leading_singletons(array: np.ndarray) -> np.ndarray:
    """``(1, 1, H, W)`` -> ``(H, W)``: a 2D array saved or painted with extra axes."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array
