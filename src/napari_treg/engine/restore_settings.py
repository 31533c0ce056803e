"""Everything one restore runs with besides the model, as typed settings built and checked once.

The front ends that hand a run to another thread or process (the restore widget's request,
a batch job) build one :class:`RestoreSettings` on the caller's side, so a bad value fails
there, before any worker starts, and the worker receives ready objects:

- ``text``: :class:`~napari_treg.solver.text.TextSettings` (method, prompt, negative prompt, schedule);
- ``config``: :class:`~napari_treg.solver.TRegSettings`, the named schedule resolved, given values on top;
- ``run``: :class:`~napari_treg.engine.restorer.RunSettings` (seed, batches, tiles, noise, previews, colour).

The model is :class:`~napari_treg.models.options.ModelSettings`, kept apart: the API also
accepts a loaded prior, and the widget keeps its model between runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import torch

from napari_treg.engine.restorer import Restorer, RunSettings
from napari_treg.errors import InvalidInputError
from napari_treg.models.base import DiffusionPrior
from napari_treg.models.options import ModelSettings
from napari_treg.settings import specs
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config
from napari_treg.solver.text import TextSettings

#: the settings classes whose fields a flat dict of ``restore`` keywords may hold, in order
PARTS = {"text": TextSettings, "config": TRegSettings, "run": RunSettings}


@dataclass(frozen=True)
class RestoreSettings:
    """The text, the method's settings and the run options of a restore (each checked when made)."""

    text: TextSettings = field(default_factory=TextSettings)
    config: TRegSettings = field(default_factory=lambda: method_config(DEFAULT_SCHEDULE, {}))
    run: RunSettings = field(default_factory=RunSettings)

    def __post_init__(self) -> None:
        for name, kind in PARTS.items():
            if not isinstance(getattr(self, name), kind):
                raise InvalidInputError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    @classmethod
    def from_values(cls, values: Mapping[str, Any], what: str = "restore setting") -> RestoreSettings:
        """``restore``-style keywords (one flat dict) -> typed settings; the schedule named in them is
        resolved into the method's settings, with the ones given explicitly on top.

        An unknown name is an :class:`InvalidInputError` listing the known ones.
        """
        known = [spec.name for kind in PARTS.values() for spec in specs(kind)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise InvalidInputError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        text = TextSettings(**pick(values, TextSettings))
        return cls(
            text, method_config(text.schedule, pick(values, TRegSettings)), RunSettings(**pick(values, RunSettings))
        )

    def with_run(self, **changes: Any) -> RestoreSettings:
        """A copy with these run options changed (checked again)."""
        return dataclasses.replace(self, run=dataclasses.replace(self.run, **changes))

    def restorer(self, prior: DiffusionPrior) -> Restorer:
        """The engine for ``prior`` with this text and these method settings (the text embedded once)."""
        method, prompt, negative = self.text.method, self.text.prompt, self.text.negative_prompt
        return Restorer(prior, self.config, method=method, prompt=prompt, negative_prompt=negative)

    def as_values(self) -> dict[str, Any]:
        """The settings as ``restore`` keywords, flat (the schedule's fields resolved): for provenance."""
        return {**asdict(self.text), **self.config.as_dict(), **asdict(self.run)}

    @property
    def uses_text(self) -> bool:
        """Whether the prompt guides the run: a prompt that is not blank and guidance above 0."""
        return bool(self.text.prompt.strip()) and self.config.guidance != 0


def pick(values: Mapping[str, Any], settings_class: type) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``settings_class``."""
    names = {spec.name for spec in specs(settings_class)}
    return {name: value for name, value in values.items() if name in names}


def model_settings(values: Mapping[str, Any]) -> ModelSettings:
    """The :class:`ModelSettings` of ``restore``-style keywords (a torch dtype given by its name)."""
    given = pick(values, ModelSettings)
    if isinstance(given.get("dtype"), torch.dtype):
        given["dtype"] = str(given["dtype"]).replace("torch.", "")
    return ModelSettings(**given)
