"""napari-treg: text-guided image restoration (TReg) for napari.

>>> from napari_treg import restore, degrade
>>> from napari_treg.operators import SuperResolution
"""

from .api import degrade, restore
from .errors import (
    Cancelled,
    DivergenceError,
    InvalidInputError,
    ModelNotFoundError,
    OutOfMemoryError,
    TRegError,
)

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "DivergenceError",
    "InvalidInputError",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "TRegError",
    "degrade",
    "restore",
]
