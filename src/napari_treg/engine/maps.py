"""The maps an ensemble makes besides its mean: one list, read by the files, the CLI, batch runs and the widgets.

Cheap to import (no torch): the command line reads it before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EnsembleMap:
    """One map of an :class:`~napari_treg.engine.ensemble.Ensemble`.

    ``name`` is its attribute on the ensemble and its part of a file name (``cells.std.tif``),
    ``layer_suffix`` ends its napari layer's name (``"cells std"``), ``colormap`` colours that layer.
    """

    name: str
    layer_suffix: str
    colormap: str
    needs_text: bool = False  #: made only where the prompt guides the run (a prompt, guidance > 0)
    needs_holdout: bool = False  #: made only by an ensemble with the held-out check (``holdout``)


ENSEMBLE_MAPS: tuple[EnsembleMap, ...] = (
    EnsembleMap("std", " std", "magma"),
    EnsembleMap("data_share", " data share", "PiYG"),  # pink = invented (0), green = measured (1)
    EnsembleMap("text_influence", " text influence", "inferno", needs_text=True),
    EnsembleMap("uncorrected_std", " uncorrected std", "magma", needs_holdout=True),  # the std before the check
)


def ensemble_maps(uses_text: bool, holdout: bool = False) -> tuple[EnsembleMap, ...]:
    """The maps an ensemble with (or without) a guiding prompt, and with (or without) the held-out check, makes."""
    return tuple(m for m in ENSEMBLE_MAPS if (uses_text or not m.needs_text) and (holdout or not m.needs_holdout))


def ensemble_map_names(uses_text: bool, holdout: bool = False) -> tuple[str, ...]:
    """The names of :func:`ensemble_maps` (``std``, ``data_share``, with text ``text_influence``, with the
    held-out check ``uncorrected_std``)."""
    return tuple(m.name for m in ensemble_maps(uses_text, holdout))
