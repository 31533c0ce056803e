"""Named data-consistency schedules: ready-made values of TRegSettings's schedule fields.

- ``"paper"``: the paper's schedule (TRegSettings's defaults): DC every 3rd step over the
  first 85 % of the steps, 5 CG iterations, no final projection.
- ``"faithful"``: measurement-faithful: the paper's schedule plus a final data-consistency
  projection (``final_dc``). On the analytic prior the result then agrees with the measurement
  to the noise level or below (inpainting: the measured pixels come back as measured), the
  prompt still picks the class where the data leave it open, the unmeasured pixels keep the
  paper's distribution, and it costs one CG solve more (docs/validation.md, "Measurement
  fidelity"; ``python benchmarks/fidelity.py``).
- ``"data-first"`` (the default of every front end): the paper's schedule with the data-first
  re-noising (``data_first``: the data-consistent estimate at full weight, ``renoise_eta`` 0.2 of
  fresh noise) and the final projection. On the analytic prior the data decide where they can
  (also against a prompt of the other class), the prompt decides only where they leave it open,
  and the residual is at the noise level (docs/validation.md, "Data first";
  ``python benchmarks/data_first.py``).
"""

from __future__ import annotations

from typing import Any

from napari_treg.errors import InvalidInputError
from napari_treg.settings import from_values
from napari_treg.solver.config import TRegSettings

#: the named data-consistency schedule used when none is given
DEFAULT_SCHEDULE = "data-first"

#: the TRegSettings fields a schedule sets
SCHEDULE_FIELDS = ("dc_every", "dc_until", "cg_iterations", "final_dc", "data_first", "renoise_eta")
_PAPER = {name: getattr(TRegSettings(), name) for name in SCHEDULE_FIELDS}

#: name -> TRegSettings field values
SCHEDULES: dict[str, dict] = {
    "paper": _PAPER,
    "faithful": _PAPER | {"final_dc": True},
    "data-first": _PAPER | {"data_first": True, "final_dc": True},
}


def schedule_settings(name: str) -> dict:
    """The TRegSettings field values of the schedule ``name`` (a new dict)."""
    if name not in SCHEDULES:
        raise InvalidInputError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return dict(SCHEDULES[name])


def method_config(schedule: str, values: dict[str, Any]) -> TRegSettings:
    """The named schedule's settings (``solver.SCHEDULES``), with the given ``values`` on top."""
    return from_values(TRegSettings, {**schedule_settings(schedule), **values}, "restore setting")
