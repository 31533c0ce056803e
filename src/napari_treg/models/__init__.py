"""Diffusion priors for TReg: Stable Diffusion 1.5, a tiny test model, and how to load them.

Importing this package is cheap: diffusers and transformers are imported only when a
model is built or loaded.
"""

from napari_treg.models.base import DiffusionPrior, NoiseSchedule
from napari_treg.models.devices import resolve_device, resolve_dtype
from napari_treg.models.hub import CLIP_IMAGE_REPO, SD15_REPO
from napari_treg.models.loading import clear_model_cache, download_model, load_model, release_model
from napari_treg.models.stable_diffusion import StableDiffusionPrior
from napari_treg.models.tiny import build_tiny_prior

__all__ = [
    "CLIP_IMAGE_REPO",
    "SD15_REPO",
    "DiffusionPrior",
    "NoiseSchedule",
    "StableDiffusionPrior",
    "build_tiny_prior",
    "clear_model_cache",
    "download_model",
    "load_model",
    "release_model",
    "resolve_device",
    "resolve_dtype",
]
