"""The TReg solver: DDIM schedule, conjugate gradient, adaptive negation and the sampler."""

from .cg import conjugate_gradient, data_consistency
from .config import TRegConfig
from .methods import METHODS, get_method
from .negation import AdaptiveNegation
from .sampler import treg_sample
from .schedule import ddim_steps
from .schedules import SCHEDULES, schedule_settings

__all__ = [
    "AdaptiveNegation",
    "METHODS",
    "SCHEDULES",
    "TRegConfig",
    "conjugate_gradient",
    "data_consistency",
    "ddim_steps",
    "get_method",
    "schedule_settings",
    "treg_sample",
]
