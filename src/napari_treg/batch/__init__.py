"""Scale-out: restore many files, or every plane of a stack, on a dask cluster (``docs/scale-out.md``).

>>> from napari_treg.batch import restore_many
>>> report = restore_many("planes/", "restored/", SuperResolution(4), steps=200)  # doctest: +SKIP

Importing this package is cheap: dask and distributed load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_treg.batch.runner import BatchReport, restore_many

__all__ = ["BatchReport", "restore_many", "open_result"]


def __getattr__(name: str) -> Any:
    if name in ("BatchReport", "restore_many"):
        from napari_treg.batch import runner

        return getattr(runner, name)
    if name == "open_result":
        from napari_treg.batch.results import open_result

        return open_result
    raise AttributeError(name)
