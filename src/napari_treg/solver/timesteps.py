"""The DDIM time grid and the data-consistency schedule."""

from __future__ import annotations

from dataclasses import dataclass

from napari_treg.models.base import NoiseSchedule


@dataclass(frozen=True)
class Step:
    """One DDIM step from ``t`` (cumulative alpha ``a``) to the next ``a_prev``."""

    index: int
    t: int
    a: float
    a_prev: float
    data_consistency: bool


def ddim_steps(schedule: NoiseSchedule, steps: int, dc_every: int, dc_until: float) -> list[Step]:
    """The ``steps`` DDIM steps, noisiest first (``steps_offset = 1``, like SD 1.5's scheduler).

    Timesteps are ``k * (T // steps) + 1`` for k = steps-1 .. 0; the step after the
    last one lands on ``alphas_cumprod[0]`` (``set_alpha_to_one = False``).
    Step ``i`` is a data-consistency step when ``i % dc_every == 0`` and
    ``i < dc_until * steps`` (57 of 200 steps at the defaults).
    """
    abar = schedule.alphas_cumprod
    total = schedule.num_train_timesteps
    ratio = total // steps
    timesteps = [min(k * ratio + 1, total - 1) for k in range(steps - 1, -1, -1)]
    result = []
    for i, t in enumerate(timesteps):
        t_prev = t - ratio
        a_prev = abar[t_prev] if t_prev >= 0 else abar[0]
        dc = dc_every > 0 and i % dc_every == 0 and i < dc_until * steps
        result.append(Step(i, t, float(abar[t]), float(a_prev), dc))
    return result
