"""Restoration methods by name: the sampler ``restore(method=...)`` runs.

Each entry has the signature of :func:`~napari_treg.solver.sampler.treg_sample`.
"""

from __future__ import annotations

from napari_treg.errors import InvalidInputError
from napari_treg.solver.baselines import psld_sample, richardson_lucy_restore, tikhonov_restore
from napari_treg.solver.sampler import treg_sample

METHODS = {
    "treg": treg_sample,
    "psld": psld_sample,
    "tikhonov": tikhonov_restore,
    "richardson_lucy": richardson_lucy_restore,
}


def get_method(name: str):
    """The sampler function registered under ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidInputError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None
