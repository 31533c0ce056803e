"""From how many sampler steps an ensemble's spread is calibrated, and what an ensemble with fewer says.

With few sampler steps the samples scatter less than the prior allows: on the exact analytic prior
(``benchmarks/calibration.py --steps-sweep``, docs/uncertainty.md "From how many steps") the invented
pixels of an inpainting get 0.57 of the posterior variance at 20 steps and 0.74 at 50, and the 90 %
intervals cover 78-84 % of the truth. :data:`CALIBRATED_FROM_STEPS` is the fewest steps measured
from which every base case met every target there; :func:`calibration_info` is ``info["calibration"]``.
"""

from __future__ import annotations

#: the fewest TReg sampler steps from which every base case of benchmarks/calibration.py met every
#: calibration target (``python benchmarks/calibration.py --steps-sweep 20 50 75 100 200 --seeds 7 8 9
#: --schedules data-first paper``: docs/uncertainty.md)
CALIBRATED_FROM_STEPS = 100
#: the methods whose ensembles that measurement covers (samplers with a model call per step)
MEASURED_METHODS = ("treg",)


def calibration_info(steps: int, method: str) -> dict:
    """``info["calibration"]``: the run's steps, the measured threshold, and ``note`` (a sentence, or None)
    when an ensemble with this many steps cannot be relied on to meet the calibration targets."""
    below = method in MEASURED_METHODS and steps < CALIBRATED_FROM_STEPS
    note = (
        f"with {steps} steps the ensemble's spread is likely too small (calibrated from {CALIBRATED_FROM_STEPS} "
        f"steps on, measured on the analytic prior): use {CALIBRATED_FROM_STEPS} or more steps to rely on its std "
        "and intervals"
        if below
        else None
    )
    return {
        "steps": steps,
        "calibrated_from_steps": CALIBRATED_FROM_STEPS,
        "measured_for": "method treg on the exact analytic prior (benchmarks/calibration.py --steps-sweep)",
        "below": below,
        "note": note,
    }
