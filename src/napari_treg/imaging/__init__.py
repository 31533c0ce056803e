"""Image maths: array layouts and normalisation (``layout``), noise (``noise``), metrics (``metrics``).

Importing this package is cheap: its modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_treg.imaging.layout import IntensityScale, intensity_scale
    from napari_treg.imaging.metrics import residual_summary
    from napari_treg.imaging.noise import estimate_noise

_HOMES = {
    "IntensityScale": "layout",
    "estimate_noise": "noise",
    "intensity_scale": "layout",
    "residual_summary": "metrics",
}

__all__ = ["IntensityScale", "estimate_noise", "intensity_scale", "residual_summary"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"napari_treg.imaging.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
