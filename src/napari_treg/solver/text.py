"""The text side of a run: method, prompt, negative prompt and schedule, written once (settings.setting)."""

from __future__ import annotations

from dataclasses import dataclass

from napari_treg.settings import check_text, setting, validate
from napari_treg.solver.methods import METHODS
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, SCHEDULES


@dataclass(frozen=True)
class TextSettings:
    """The method, the text and the named schedule; creating one checks them (prompts must be UTF-8 text)."""

    method: str = setting("treg", "treg, or a baseline of napari_treg.solver.METHODS", choices=tuple(METHODS))
    prompt: str = setting("", "what the image shows")
    negative_prompt: str = setting("", "what the image should not look like")
    schedule: str = setting(
        DEFAULT_SCHEDULE, "named data-consistency schedule (napari_treg.solver.SCHEDULES)", choices=tuple(SCHEDULES)
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", check_text(self.prompt, "prompt"))
        object.__setattr__(self, "negative_prompt", check_text(self.negative_prompt, "negative_prompt"))
        validate(self)
