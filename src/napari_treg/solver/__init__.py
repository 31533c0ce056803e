"""The TReg solver: DDIM schedule, conjugate gradient, adaptive negation and the sampler."""

from napari_treg.solver.cg import conjugate_gradient, data_consistency
from napari_treg.solver.config import TRegConfig, TRegSettings
from napari_treg.solver.methods import METHODS, get_method
from napari_treg.solver.negation import AdaptiveNegation
from napari_treg.solver.sampler import treg_sample
from napari_treg.solver.schedules import SCHEDULES, schedule_settings
from napari_treg.solver.timesteps import ddim_steps

__all__ = [
    "AdaptiveNegation",
    "METHODS",
    "SCHEDULES",
    "TRegConfig",
    "TRegSettings",
    "conjugate_gradient",
    "data_consistency",
    "ddim_steps",
    "get_method",
    "schedule_settings",
    "treg_sample",
]
