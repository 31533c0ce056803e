"""From how many sampler steps an ensemble's spread is calibrated, and what an ensemble with fewer says.

With few sampler steps the samples scatter less than the prior allows: on the exact analytic prior
(``benchmarks/calibration.py --steps-sweep``, docs/uncertainty.md "From how many steps") the invented
pixels of an inpainting get 0.57 of the posterior variance at 20 steps (data-first), and their 90 %
intervals cover 79-82 % of the truth. :data:`CALIBRATED_FROM_STEPS` is, for each kind of
schedule, the fewest steps measured from which every base case met every target there;
:func:`calibration_info` is an ensemble's ``info["calibration"]``.
"""

from __future__ import annotations

from napari_treg.solver.config import TRegSettings

#: the fewest TReg sampler steps from which all 24 base cases of benchmarks/calibration.py (3 truths) met every
#: calibration target, with the data-first re-noising (the default schedule) and without it (``paper``; the
#: ``faithful`` ensemble is the same, its final projection left out): docs/uncertainty.md, "From how many steps"
CALIBRATED_FROM_STEPS = {"data-first": 100, "paper": 75}
#: the fraction of the sampler's steps, from the start, over which an ensemble's samples take data steps (at
#: most; the schedule's ``dc_until`` where smaller). The data steps of the last steps, at low noise, survive the
#: denoiser almost as they are, so a sample would carry them into the noise-aware last step, which counts the data
#: once more (too little spread, a mean pulled onto the data). On the analytic prior (benchmarks/calibration.py,
#: docs/uncertainty.md "Where the samples take data steps") 0.6 in place of the schedules' 0.85 lifts the
#: photon blur's bright-half coverage from 84.3 % to 86.5 % and keeps all 24 base cases within every target.
ENSEMBLE_DC_UNTIL = 0.6
#: the methods whose ensembles that measurement covers (samplers with a model call per step)
MEASURED_METHODS = ("treg",)


def calibrated_from_steps(config: TRegSettings) -> int:
    """The fewest steps from which an ensemble with these method settings was measured to be calibrated."""
    return CALIBRATED_FROM_STEPS["data-first" if config.data_first else "paper"]


def calibration_info(config: TRegSettings, method: str) -> dict:
    """``info["calibration"]``: the run's steps, the measured threshold, and ``note`` (a sentence, or None)
    when an ensemble with this many steps cannot be relied on to meet the calibration targets."""
    threshold = calibrated_from_steps(config)
    below = method in MEASURED_METHODS and config.steps < threshold
    note = (
        f"with {config.steps} steps the ensemble's spread is likely too small (calibrated from {threshold} "
        f"steps on, measured on the analytic prior): use {threshold} or more steps to rely on its std and intervals"
        if below
        else None
    )
    return {
        "steps": config.steps,
        "calibrated_from_steps": threshold,
        "measured_for": "method treg on the exact analytic prior (benchmarks/calibration.py --steps-sweep)",
        "below": below,
        "note": note,
    }
