"""Forward operators ``y = A x`` with exact adjoints.

Each operator works on torch tensors ``(B, C, H, W)`` of any size, batch and
floating dtype. Blurs use one boundary rule: half-sample symmetric mirroring.
"""

from .base import LinearOperator
from .blur import GaussianBlur, KernelBlur, MotionBlur
from .masking import Denoising, Inpainting
from .registry import OPERATORS, OperatorSpec, Param, build_operator, operator_spec
from .resample import SuperResolution

__all__ = [
    "LinearOperator",
    "SuperResolution",
    "GaussianBlur",
    "MotionBlur",
    "KernelBlur",
    "Inpainting",
    "Denoising",
    "OPERATORS",
    "OperatorSpec",
    "Param",
    "build_operator",
    "operator_spec",
]
