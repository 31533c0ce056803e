"""Files: reading and writing images (``files``), output paths and provenance files (``outputs``).

Importing this package is cheap: its modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_treg.io.files import read_image, write_image
    from napari_treg.io.outputs import write_together

_HOMES = {
    "read_image": "files",
    "write_image": "files",
    "write_together": "outputs",
}

__all__ = ["read_image", "write_image", "write_together"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"napari_treg.io.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
