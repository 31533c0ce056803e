"""Devices and precisions: ``"auto"`` -> cuda, mps or cpu; ``None`` -> float16 on CUDA, else float32."""

from __future__ import annotations

import re

import torch

from napari_treg.errors import InvalidInputError

VALID_DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
#: the precisions offered by the CLI and the widget (None: float16 on CUDA, float32 elsewhere)
DTYPE_CHOICES = ("float32", "float16", "bfloat16")
DTYPE_NAMES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` -> a device."""
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", text):
        return checked_cuda(text)
    if text == "mps":
        if not mps_available():
            raise InvalidInputError("device 'mps' requested, but Apple MPS is not available here; use 'auto' or 'cpu'")
        return torch.device("mps")
    raise InvalidInputError(f"unknown device {name!r}; valid devices: {', '.join(VALID_DEVICES)}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float16 on CUDA, float32 elsewhere; also accepts "fp16", "bfloat16", "float32", ..."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in set(DTYPE_NAMES.values()):
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in DTYPE_NAMES:
        return DTYPE_NAMES[dtype.strip().lower().removeprefix("torch.")]
    raise InvalidInputError(f"unsupported dtype {dtype!r}; use float16 (fp16), bfloat16 or float32")


def checked_cuda(text: str) -> torch.device:
    if not torch.cuda.is_available():
        raise InvalidInputError(
            f"device {text!r} requested, but CUDA is not available (no GPU or a CPU-only torch build); "
            "use 'auto' or 'cpu'"
        )
    device = torch.device(text)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {text!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
