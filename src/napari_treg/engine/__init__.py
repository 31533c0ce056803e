"""The engine: a :class:`Restorer` built once from a prior and settings, called on data; tiling,
the restore settings and the ensemble.

Rooms: ``restorer`` (Restorer, RunSettings, Progress, Restoration, prepare), ``tiling`` (geometry and
blending), ``restore_settings`` (RestoreSettings), ``ensemble`` (Ensemble, EnsembleSettings),
``run_info`` (provenance: RunInfo, EnsembleInfo). Nothing here imports ``napari_treg.io`` or a front end.

Importing this package is cheap: its modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_treg.engine.ensemble import Ensemble, EnsembleSettings
    from napari_treg.engine.restore_settings import RestoreSettings
    from napari_treg.engine.restorer import Progress, Restoration, Restorer, RunSettings, prepare
    from napari_treg.engine.run_info import EnsembleInfo, RunInfo

_HOMES = {
    "Ensemble": "ensemble",
    "EnsembleInfo": "run_info",
    "EnsembleOptions": "ensemble",
    "EnsembleSettings": "ensemble",
    "Progress": "restorer",
    "Restoration": "restorer",
    "RestoreSettings": "restore_settings",
    "Restorer": "restorer",
    "RunInfo": "run_info",
    "RunOptions": "restorer",
    "RunSettings": "restorer",
    "prepare": "restorer",
}

__all__ = [
    "Ensemble",
    "EnsembleInfo",
    "EnsembleSettings",
    "Progress",
    "Restoration",
    "RestoreSettings",
    "Restorer",
    "RunInfo",
    "RunSettings",
    "prepare",
]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"napari_treg.engine.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
