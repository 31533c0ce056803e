"""Forward operators ``y = A x`` with exact adjoints.

Each operator works on torch tensors ``(B, C, H, W)`` of any size, batch and floating dtype;
:class:`VolumeBlur` takes a z-stack ``(Z, C, H, W)`` and couples its planes. Blurs use one
boundary rule: half-sample symmetric mirroring.
"""

from napari_treg.operators.base import LinearOperator
from napari_treg.operators.blur import GaussianBlur, KernelBlur, MotionBlur
from napari_treg.operators.masking import Denoising, Inpainting
from napari_treg.operators.registry import OPERATORS, OperatorSpec, Param, build_operator, operator_spec
from napari_treg.operators.resample import SuperResolution
from napari_treg.operators.volume import VolumeBlur

__all__ = [
    "LinearOperator",
    "SuperResolution",
    "GaussianBlur",
    "MotionBlur",
    "KernelBlur",
    "VolumeBlur",
    "Inpainting",
    "Denoising",
    "OPERATORS",
    "OperatorSpec",
    "Param",
    "build_operator",
    "operator_spec",
]
