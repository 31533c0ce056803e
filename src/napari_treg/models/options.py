"""Which model a run loads, and where: the model settings, written once (settings.setting)."""

from __future__ import annotations

from dataclasses import dataclass

from napari_treg.settings import setting, validate


@dataclass(frozen=True)
class ModelSettings:
    """The model, its device and dtype, and whether to save accelerator memory; creating one checks them."""

    model: str = setting(
        "sd15",
        "sd15, a hub id, a local folder, a checkpoint file, tiny (test model) or analytic (exact prior)",
    )
    device: str = setting("auto", "auto picks cuda, mps, cpu; or a torch device such as cuda:1")
    dtype: str | None = setting(None, "float16 or float32 (None: float16 on cuda, float32 otherwise)")
    low_memory: bool = setting(False, "offload parts of the model to save accelerator memory (slower)")

    def __post_init__(self) -> None:
        validate(self)
