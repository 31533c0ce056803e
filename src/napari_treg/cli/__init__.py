"""The command line, ``napari-treg``: subcommands (``commands``), options generated from the settings
(``options``) and ``napari-treg batch`` (``batch``).

Importing this package is cheap: its modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_treg.cli.commands import main

_HOMES = {
    "main": "commands",
}

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"napari_treg.cli.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
