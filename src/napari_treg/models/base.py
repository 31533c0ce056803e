"""The one interface between the TReg sampler and a diffusion prior.

Stable Diffusion, the tiny random-weight test model and the analytic prior all
implement :class:`DiffusionPrior`; the sampler in :mod:`napari_treg.solver`
calls nothing else, so every prior runs the very same sampler code.

Conventions
-----------
- Images ``x`` are float tensors ``(B, 3, H, W)`` in ``[-1, 1]``.
- Latents ``z`` are whatever the prior's autoencoder makes of them, any number
  of channels and any scale (``latent_shape`` says which).
- Text embeddings are ``(B, tokens, width)``; image embeddings ``(B, width)``,
  unit length, with the same ``width`` so adaptive negation can compare them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """The training noise schedule of a prior: ``alphas_cumprod[t]`` for t in [0, T)."""

    alphas_cumprod: torch.Tensor  # float64, shape (T,)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @classmethod
    def scaled_linear(cls, beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000) -> NoiseSchedule:
        """Stable Diffusion 1.5's schedule (``scaled_linear`` betas)."""
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
        return cls(torch.cumprod(1.0 - betas, dim=0))


class DiffusionPrior(ABC):
    """A latent diffusion model as the TReg sampler sees it."""

    #: human-readable id, stored in result metadata (e.g. the hub id)
    name: str = "prior"
    #: True for models that produce no meaningful image (test models)
    is_test_model: bool = False
    device: torch.device = torch.device("cpu")
    #: dtype of the model's own computations; sampler state stays float32
    dtype: torch.dtype = torch.float32
    schedule: NoiseSchedule

    @abstractmethod
    def latent_shape(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        """``(channels, h, w)`` of the latent of an image of size ``image_hw``."""

    @property
    def size_multiple(self) -> int:
        """Image sizes must be multiples of this (8 for SD's VAE)."""
        return 1

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] -> latent (posterior mean, scaled)."""

    @abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent -> image ``(B, 3, H, W)`` in [-1, 1] (not clipped)."""

    @abstractmethod
    def predict_noise(self, z: torch.Tensor, t: int, text: torch.Tensor) -> torch.Tensor:
        """Noise prediction eps(z_t, t, text) for a batch of latents and embeddings."""

    @abstractmethod
    def embed_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text embeddings ``(B, tokens, width)``."""

    @abstractmethod
    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [-1, 1] -> unit-length embedding ``(B, width)``.

        Must be differentiable-free (no grad needed) and comparable with the rows
        of :meth:`embed_text` (same width).
        """

    def release(self) -> None:
        """Free accelerator memory held by the model (optional)."""
