"""Text-conflict evidence: does the prompt pull the result away from what the measurement says?

Classifier-free guidance already predicts the noise with and without the prompt in one model
call, so at a data-consistency step both clean estimates are at hand: the text-free
``x_u = D(tweedie(z, eps_u))`` and the prompted ``x_c = D(tweedie(z, eps_c))``. How much less
consistent with the measurement the prompted one is, in nats at the noise level sigma,

    deficit = (||A x_c - y||^2 - ||A x_u - y||^2) / (2 sigma^2),

is the evidence. Where the prompt names what the data show, both estimates agree (deficit ~0 or
negative); where the data leave the prompt's choice open, both fit the data equally; where the
prompt names something the data rule out, the prompted estimate misses the measurement by many
nats. No extra model call is made: :class:`ConflictCheck` is a sampler callback that decodes the
two estimates at the first few data-consistency steps.
"""

from __future__ import annotations

import torch

from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import LinearOperator
from napari_treg.solver.sampler import tweedie

#: the first this many data-consistency steps are checked (steps 0, 3, 6, 9 of the default 200):
#: later, the latent has taken the class the guidance and the data agreed on, and both estimates show it
CHECK_STEPS = 4
#: a prompted estimate this many nats less consistent with the measurement than the text-free one
#: (median over the checked steps) raises the flag. On the analytic prior (benchmarks/data_first.py)
#: a prompt the data rule out costs thousands of nats, one the data leave open under 2.
FLAG_NATS = 50.0


class ConflictCheck:
    """A sampler callback collecting, per sample, how much the prompt costs in measurement fit."""

    def __init__(self, prior: DiffusionPrior, operator: LinearOperator, y: torch.Tensor, noise: float):
        self.prior = prior
        self.operator = operator
        self.y = operator.measured(y.to(prior.device, torch.float32))
        self.noise = float(noise)
        self.deficits: list[torch.Tensor] = []
        self.dc_seen = 0

    def __call__(self, state: dict) -> None:
        step = state["step"]
        if not step.data_consistency or state.get("eps_text") is None:
            return
        self.dc_seen += 1
        if self.dc_seen > CHECK_STEPS:
            return
        z_t, a = state["z_t"], step.a
        x_free = self.prior.decode(tweedie(z_t, state["eps_free"], a)).float()
        x_text = self.prior.decode(tweedie(z_t, state["eps_text"], a)).float()
        self.deficits.append((self.misfit(x_text) - self.misfit(x_free)).cpu())

    def misfit(self, x: torch.Tensor) -> torch.Tensor:
        """``||A x - y||^2 / (2 sigma^2)`` per sample (nats, up to a constant)."""
        error = (self.operator.forward(x) - self.y).double().square().flatten(1).sum(dim=1)
        return error / (2 * self.noise**2)

    def evidence(self) -> torch.Tensor | None:
        """Per sample: the median deficit over the checked steps (nats), or None if none was checked."""
        if not self.deficits:
            return None
        return torch.stack(self.deficits).median(dim=0).values


class ConflictLog:
    """The evidence of one restoration: the noise level used and every plane's (or tile's) deficit."""

    def __init__(self, noise: float | None, noise_source: str):
        self.noise = noise
        self.noise_source = noise_source
        self.deficits: list[float] = []

    def check(self, prior: DiffusionPrior, operator: LinearOperator, y: torch.Tensor) -> ConflictCheck | None:
        """A callback for one sampler call on measurements ``y`` (None without a usable noise level)."""
        if not self.noise:
            return None
        return ConflictCheck(prior, operator, y, self.noise)

    def add(self, check: ConflictCheck | None) -> None:
        evidence = None if check is None else check.evidence()
        if evidence is not None:
            self.deficits.extend(float(d) for d in evidence)

    def summary(self) -> dict:
        """``info["text_conflict"]``: the flag and the evidence behind it (plain JSON).

        ``deficit_nats``: the largest over planes/tiles of the median nats by which the prompted
        estimate fit the measurement worse than the text-free one.
        """
        flagged = [d for d in self.deficits if d > FLAG_NATS]
        return {
            "flag": bool(flagged),
            "checked": bool(self.deficits),
            "deficit_nats": max(self.deficits) if self.deficits else None,
            "units_flagged": len(flagged),
            "units": len(self.deficits),
            "threshold_nats": FLAG_NATS,
            "noise": self.noise,
            "noise_source": self.noise_source,
        }


def unchecked(reason: str) -> dict:
    """``info["text_conflict"]`` of a run that was not checked, and why."""
    return {"flag": False, "checked": False, "reason": reason}


def conflict_message(info: dict) -> str | None:
    """The one paragraph a front end shows when the prompt contradicts the measurement, else None."""
    conflict = info.get("text_conflict") or {}
    if not conflict.get("flag"):
        return None
    units = conflict["units"]
    over = f" over the {conflict['samples']} samples" if "samples" in conflict else ""  # an ensemble's
    where = "" if units == 1 else f" in {conflict['units_flagged']} of {units} planes/tiles{over}"
    return (
        f"Text conflict{where}: the prompt pulled the restoration {conflict['deficit_nats']:.0f} nats away from "
        f"the measurement (noise sigma {conflict['noise']:.3g}, {conflict['noise_source']}); the text-free "
        "estimate fits the data far better. The data decide here, so the prompt's content may not be what "
        "was measured: check the prompt, or compare with a run without text."
    )
