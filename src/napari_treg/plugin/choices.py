"""What the widgets offer: operators, models, devices and precisions (no Qt here).

Each choice maps a widget value to the engine's own vocabulary, so the widgets
only read values and call :func:`build_operator` and :func:`model_spec`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidInputError
from ..operators import (
    Denoising,
    GaussianBlur,
    Inpainting,
    KernelBlur,
    LinearOperator,
    MotionBlur,
    SuperResolution,
)


@dataclass(frozen=True)
class OperatorChoice:
    """One forward model as the widgets show it, and the parameter widgets it uses."""

    key: str
    label: str
    parameters: tuple[str, ...]


OPERATORS: tuple[OperatorChoice, ...] = (
    OperatorChoice("super_resolution", "Super-resolution", ("factor", "filter")),
    OperatorChoice("gaussian_blur", "Deblur: Gaussian", ("sigma",)),
    OperatorChoice("motion_blur", "Deblur: motion", ("length", "angle")),
    OperatorChoice("psf_blur", "Deblur: measured PSF", ("psf",)),
    OperatorChoice("inpainting", "Inpainting (mask)", ("mask",)),
    OperatorChoice("denoising", "Denoising", ()),
)
OPERATOR_PARAMETERS: tuple[str, ...] = ("factor", "filter", "sigma", "length", "angle", "psf", "mask")
SR_FILTERS: tuple[tuple[str, str], ...] = (
    ("bicubic (photographs)", "bicubic"),
    ("box (camera binning)", "box"),
    ("Gaussian", "gaussian"),
)


def operator_choice(key: str) -> OperatorChoice:
    """The :class:`OperatorChoice` called ``key``."""
    for choice in OPERATORS:
        if choice.key == key:
            return choice
    raise InvalidInputError(f"unknown operator {key!r}; choose one of {[c.key for c in OPERATORS]}")


def visible_parameters(key: str) -> dict[str, bool]:
    """For every operator parameter widget, whether operator ``key`` uses it."""
    used = operator_choice(key).parameters
    return {name: name in used for name in OPERATOR_PARAMETERS}


def build_operator(
    key: str,
    *,
    factor: int = 4,
    filter: str = "bicubic",
    sigma: float = 2.0,
    length: float = 9.0,
    angle: float = 0.0,
    psf: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> LinearOperator:
    """The operator ``key`` from the widget values (parameters of other operators are ignored)."""
    if key == "super_resolution":
        return SuperResolution(factor=factor, filter=filter)
    if key == "gaussian_blur":
        return GaussianBlur(sigma)
    if key == "motion_blur":
        return MotionBlur(length, angle)
    if key == "psf_blur":
        if psf is None:
            raise InvalidInputError("choose the PSF: an Image layer holding the measured point spread function")
        return KernelBlur(psf)
    if key == "inpainting":
        if mask is None:
            raise InvalidInputError(
                "choose the mask: a Labels layer where the missing pixels are painted (label > 0 = missing)"
            )
        return Inpainting(mask)
    if key == "denoising":
        return Denoising()
    raise InvalidInputError(f"unknown operator {key!r}; choose one of {[c.key for c in OPERATORS]}")


def sr_factor(operator: LinearOperator) -> int:
    """How many times larger the restored image is than the measurement (1 unless SR)."""
    return int(getattr(operator, "factor", 1)) if isinstance(operator, SuperResolution) else 1


# -- models, devices, precisions ------------------------------------------------------------

TEST_MODEL_LABEL = "Tiny test model (random weights: no meaningful image)"
MODELS: tuple[tuple[str, str], ...] = (
    ("Stable Diffusion 1.5 (Hugging Face hub)", "sd15"),
    ("Stable Diffusion 1.x, local diffusers folder", "folder"),
    ("Stable Diffusion 1.x, checkpoint file", "checkpoint"),
    (TEST_MODEL_LABEL, "tiny"),
    ("Analytic test prior (exact; shapes only: disk, square)", "analytic"),
)
PRECISIONS: tuple[tuple[str, str | None], ...] = (
    ("auto (float16 on GPU)", None),
    ("float32", "float32"),
    ("float16", "float16"),
    ("bfloat16", "bfloat16"),
)


def model_spec(choice: str, path: str | None = None) -> str:
    """The ``model`` argument of ``restore``/``load_model`` for a model choice and path."""
    if choice in ("sd15", "tiny", "analytic"):
        return choice
    if choice in ("folder", "checkpoint"):
        text = str(path or "").strip()
        if not text or text == ".":
            what = "a diffusers folder" if choice == "folder" else "a .safetensors or .ckpt file"
            raise InvalidInputError(f"choose the model path: {what}")
        return text
    # a hub id, path or name typed from the console
    return str(choice)


def available_devices() -> list[str]:
    """Devices that exist here: auto, cpu, every CUDA GPU, and Apple MPS."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices
