"""Text-conflict evidence: does the prompt pull the result away from what the measurement says?

Classifier-free guidance already predicts the noise with and without the prompt in one model
call, so at a data-consistency step both clean estimates are at hand: the text-free
``x_u = D(tweedie(z, eps_u))`` and the prompted ``x_c = D(tweedie(z, eps_c))``. How much less
consistent with the measurement the prompted one is, in nats at the noise level sigma,

    deficit = (||A x_c - y||^2 - ||A x_u - y||^2) / (2 sigma^2),

is the evidence. Where the prompt names what the data show, both estimates agree (deficit ~0 or
negative); where the data leave the prompt's choice open, both fit the data equally; where the
prompt names something the data rule out, the prompted estimate misses the measurement by many
nats. With per-value noise (photon noise) the sum is weighted,
``sum_i ((A x_c - y)_i^2 - (A x_u - y)_i^2) / (2 var_i)``, with ``var_i`` taken at the text-free
estimate ``A x_u`` for both. No extra model call is made: :class:`ConflictCheck` is a sampler callback that decodes the
two estimates at the noisiest data-consistency steps.

The evidence exists only while the class is still open in the latent. Once the sampler has
committed it (the data-first schedule: to what the data show), the prompt no longer changes the
estimate, both estimates are the same and the deficit is 0 whatever the prompt: no evidence, not
agreement. So only data-consistency steps at high noise are read (the first step, whose latent
is the initial noise whatever its t, and those at ``abar_t <= CHECK_MAX_ABAR``), steps where the
prompt left the estimate unchanged are skipped, and the median is taken over the first
``CHECK_STEPS`` steps that remain. (Reading "the first 4 data-consistency steps" instead let the
committed steps outvote the first one: on the analytic prior a prompt the data rule out read
0 nats at 8 and 12 steps, where its first step alone read 18 557 and 18 336, and 0 at 200 steps
on a 128x128 image; docs/method.md.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import LinearOperator
from napari_treg.solver.noise_weights import NoiseVariance
from napari_treg.solver.sampler import tweedie
from napari_treg.solver.timesteps import Step

#: the median is taken over (at most) this many checked data-consistency steps, the noisiest first
#: (steps 0, 3, 6, 9 of the default 200)
CHECK_STEPS = 4
#: besides the first step (its latent is the initial noise), only data-consistency steps whose latent
#: is still mostly noise, ``abar_t`` at most this, are read (signal share sqrt(abar_t) <= 0.25): from 43
#: steps on all of the first 4 data-consistency steps, as before; 3 at 29-39 steps, 2 at 16-28, 1 at 1-15
CHECK_MAX_ABAR = 0.06
#: a step at which the prompt moved no pixel of the clean estimate by more than this ([-1, 1] image
#: units) carries no evidence: the latent has committed, and it is skipped
SAME_ESTIMATE = 1e-5
#: a prompted estimate this many nats less consistent with the measurement than the text-free one
#: (median over the checked steps) raises the flag. On the analytic prior (benchmarks/data_first.py)
#: a prompt the data rule out costs thousands of nats, one the data leave open under 2.
FLAG_NATS = 50.0


class ConflictCheck:
    """A sampler callback collecting, per sample, how much the prompt costs in measurement fit."""

    def __init__(
        self,
        prior: DiffusionPrior,
        operator: LinearOperator,
        y: torch.Tensor,
        noise: float,
        variance: NoiseVariance | None = None,
    ):
        self.prior = prior
        self.operator = operator
        self.y = operator.measured(y.to(prior.device, torch.float32))
        self.noise = float(noise)
        self.variance = variance
        #: per read step, per sample: the deficit (nats), NaN where that step gave the sample no evidence
        self.deficits: list[torch.Tensor] = []
        self.counted: torch.Tensor | None = None  # per sample: steps with evidence so far
        self.noisy_dc_steps = 0  # data-consistency steps with the prompt used, at high noise (noisy)
        self.total_steps = 0

    def __call__(self, state: dict) -> None:
        step = state["step"]
        self.total_steps = state["total"]
        if not step.data_consistency or state.get("eps_text") is None or not noisy(step):
            return
        self.noisy_dc_steps += 1
        if self.counted is not None and bool((self.counted >= CHECK_STEPS).all()):
            return
        z_t, a = state["z_t"], step.a
        x_free = self.prior.decode(tweedie(z_t, state["eps_free"], a)).float()
        x_text = self.prior.decode(tweedie(z_t, state["eps_text"], a)).float()
        changed = (x_text - x_free).abs().flatten(1).amax(dim=1).cpu() > SAME_ESTIMATE
        counted = torch.zeros_like(changed, dtype=torch.long) if self.counted is None else self.counted
        wanted = changed & (counted < CHECK_STEPS)
        self.counted = counted + wanted.long()
        var = None if self.variance is None else self.variance.of(self.operator.forward(x_free)).double()
        deficit = (self.misfit(x_text, var) - self.misfit(x_free, var)).cpu()
        self.deficits.append(torch.where(wanted, deficit, torch.full_like(deficit, math.nan)))

    def misfit(self, x: torch.Tensor, var: torch.Tensor | None = None) -> torch.Tensor:
        """``||A x - y||^2 / (2 sigma^2)`` per sample (nats, up to a constant); with ``var`` per value,
        ``sum (A x - y)^2 / (2 var)``."""
        if var is not None:
            return ((self.operator.forward(x) - self.y).double().square() / (2 * var)).flatten(1).sum(dim=1)
        error = (self.operator.forward(x) - self.y).double().square().flatten(1).sum(dim=1)
        return error / (2 * self.noise**2)

    def evidence(self) -> torch.Tensor | None:
        """Per sample: the median deficit over its checked steps (nats; NaN for a sample no step gave
        evidence), or None if no step was read."""
        if not self.deficits:
            return None
        return torch.stack(self.deficits).nanmedian(dim=0).values

    def unchecked_reason(self) -> str:
        """Why a sample has no evidence."""
        if self.noisy_dc_steps == 0:
            return (
                f"no data-consistency step at high noise (the first step, or abar_t <= {CHECK_MAX_ABAR}) "
                f"in {self.total_steps} steps"
            )
        steps = f"{self.noisy_dc_steps} data-consistency step{'' if self.noisy_dc_steps == 1 else 's'}"
        return f"no evidence: the prompt did not change the estimate at the {steps} at high noise"


def noisy(step: Step) -> bool:
    """Whether the step's latent is still mostly noise: the first step, or ``abar_t <= CHECK_MAX_ABAR``."""
    return step.index == 0 or step.a <= CHECK_MAX_ABAR


class ConflictLog:
    """The evidence of one restoration: the noise level used and every plane's (or tile's) deficit."""

    def __init__(self, noise: float | None, noise_source: str, variance: NoiseVariance | None = None):
        self.noise = noise
        self.noise_source = noise_source
        self.variance = variance  # per-value noise (the deficit is then a weighted sum)
        self.deficits: list[float] = []
        self.unchecked_units = 0
        self.reasons: list[str] = []  # why units were not checked (each reason once)

    def check(self, prior: DiffusionPrior, operator: LinearOperator, y: torch.Tensor) -> ConflictCheck | None:
        """A callback for one sampler call on measurements ``y`` (None without a usable noise level)."""
        if not self.noise:
            return None
        return ConflictCheck(prior, operator, y, self.noise, self.variance)

    def add(self, check: ConflictCheck | None) -> None:
        """Log the evidence of one sampler call's check (None: no noise level, nothing checked)."""
        if check is None:
            self.note(f"no noise level ({self.noise_source})")
            return
        evidence = check.evidence()
        units = [float(d) for d in evidence] if evidence is not None else [math.nan] * len(check.y)
        self.deficits.extend(d for d in units if not math.isnan(d))
        unchecked = sum(math.isnan(d) for d in units)
        if unchecked:
            self.unchecked_units += unchecked
            self.note(check.unchecked_reason())

    def note(self, reason: str) -> None:
        """Remember why units were not checked (each reason once)."""
        if reason not in self.reasons:
            self.reasons.append(reason)

    def summary(self) -> dict:
        """``info["text_conflict"]``: :meth:`conflict` as JSON."""
        return self.conflict().as_dict()

    def conflict(self) -> TextConflict:
        """The check of the run: the flag and the evidence behind it.

        ``deficit_nats``: the largest over planes/tiles of the median nats by which the prompted
        estimate fit the measurement worse than the text-free one; ``units_unchecked``: planes/tiles
        without evidence, and ``reason`` why (also when none was checked).
        """
        flagged = [d for d in self.deficits if d > FLAG_NATS]
        return TextConflict(
            flag=bool(flagged),
            checked=bool(self.deficits),
            deficit_nats=max(self.deficits) if self.deficits else None,
            units_flagged=len(flagged),
            units=len(self.deficits),
            units_unchecked=self.unchecked_units,
            noise=self.noise,
            noise_source=self.noise_source,
            reason="; ".join(self.reasons) or None,
        )


@dataclass(frozen=True)
class TextConflict:
    """The text-conflict check of a run, as an object: what ``info["text_conflict"]`` holds.

    ``units`` is None for a run the check does not apply to (no prompt, guidance 0, a baseline
    method; ``reason`` says which); ``samples`` is set for an ensemble's check.
    """

    flag: bool = False
    checked: bool = False
    deficit_nats: float | None = None
    units_flagged: int = 0
    units: int | None = None
    units_unchecked: int = 0
    threshold_nats: float = FLAG_NATS
    noise: float | None = None
    noise_source: str | None = None
    reason: str | None = None
    samples: int | None = None

    @classmethod
    def of(cls, info: Mapping[str, Any] | TextConflict) -> TextConflict:
        """The check recorded in a run's ``info`` (or a batch record; not applicable when absent), or ``info``
        itself when it is one (a run's ``run_info.text_conflict``)."""
        if isinstance(info, TextConflict):
            return info
        recorded = info.get("text_conflict") or {}
        return cls(**{name: recorded[name] for name in TEXT_CONFLICT_FIELDS if name in recorded})

    def as_dict(self) -> dict:
        """Plain JSON, written once: the flag and whether checked, the evidence where the check applies,
        ``reason`` where something was not checked and ``samples`` for an ensemble."""
        if self.units is None:
            return {"flag": self.flag, "checked": self.checked, "reason": self.reason}
        values = {name: getattr(self, name) for name in TEXT_CONFLICT_FIELDS[:9]}
        return {
            **values,
            **{name: getattr(self, name) for name in ("reason", "samples") if getattr(self, name) is not None},
        }

    @property
    def unchecked_units(self) -> bool:
        """Whether the prompt guided the run but some (or all) planes/tiles gave no evidence."""
        return self.units is not None and self.reason is not None


#: the fields of :class:`TextConflict` in the order ``info`` has always listed them
TEXT_CONFLICT_FIELDS = tuple(field.name for field in fields(TextConflict))


def unchecked(reason: str) -> dict:
    """``info["text_conflict"]`` of a run that was not checked, and why."""
    return TextConflict(reason=reason).as_dict()


def conflict_message(info: Mapping[str, Any] | TextConflict) -> str | None:
    """The one paragraph a front end shows when the prompt contradicts the measurement, else None.

    ``info``: a run's info, or its check itself (:meth:`TextConflict.of`)."""
    conflict = TextConflict.of(info)
    if not conflict.flag:
        return None
    units = conflict.units
    over = f" over the {conflict.samples} samples" if conflict.samples is not None else ""  # an ensemble's
    where = "" if units == 1 else f" in {conflict.units_flagged} of {units} planes/tiles{over}"
    return (
        f"Text conflict{where}: the prompt pulled the restoration {conflict.deficit_nats:.0f} nats away from "
        f"the measurement (noise sigma {conflict.noise:.3g}, {conflict.noise_source}); the text-free "
        "estimate fits the data far better. The data decide here, so the prompt's content may not be what "
        "was measured: check the prompt, or compare with a run without text."
    )


def unchecked_message(info: Mapping[str, Any] | TextConflict) -> str | None:
    """The line a front end shows when the prompt guided the run but the check lacked evidence, else None.

    None where every plane/tile was checked, and for runs the check does not apply to (no prompt,
    guidance 0, a baseline method): ``info["text_conflict"]["reason"]`` says why for those.
    """
    conflict = TextConflict.of(info)
    if not conflict.unchecked_units:
        return None
    missing, checked = conflict.units_unchecked, conflict.units
    where = f" for {missing} of {missing + checked} planes/tiles" if missing and checked else ""
    return f"The text-conflict check was not made{where}: {conflict.reason}."
