"""napari-treg: text-guided image restoration (TReg) for napari.

>>> from napari_treg import restore, degrade
>>> from napari_treg.operators import SuperResolution
"""

from typing import TYPE_CHECKING

from napari_treg.errors import (
    Cancelled,
    DivergenceError,
    InvalidInputError,
    ModelNotFoundError,
    OutOfMemoryError,
    TRegError,
)

if TYPE_CHECKING:
    from napari_treg.api import degrade, ensemble, restore
    from napari_treg.engine.ensemble import Ensemble

__version__ = "0.1.0"


def __getattr__(name: str):
    """``degrade``, ``restore`` and ``ensemble`` are imported on first use: importing the package (and its
    command line) does not load torch, so Ctrl-C while torch loads is handled by the CLI."""
    if name in ("degrade", "ensemble", "restore"):
        from napari_treg import api

        return getattr(api, name)
    if name == "Ensemble":
        from napari_treg.engine.ensemble import Ensemble

        return Ensemble
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Cancelled",
    "DivergenceError",
    "Ensemble",
    "InvalidInputError",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "TRegError",
    "degrade",
    "ensemble",
    "restore",
]
