"""Adaptive negation: null-text optimisation in CLIP space.

The null (negative) text embedding ``u`` is moved away from the concept that
the current estimate shows: the loss is the mean over token rows ``u_j`` of
``<f, u_j>``, with ``f`` the unit CLIP image embedding of the data-consistent
estimate, minimised by a few Adam steps. ``u`` is kept in float32 whatever the
model's dtype (Adam's eps underflows in float16).
"""

from __future__ import annotations

import torch


class AdaptiveNegation:
    """Holds the optimised null embedding and its Adam state across sampler steps."""

    def __init__(self, null: torch.Tensor, lr: float, steps: int):
        self.null = null.detach().float().clone().requires_grad_(True)
        self.steps = steps
        self.optimizer = torch.optim.Adam([self.null], lr=lr)
        self.last_similarity: torch.Tensor | None = None

    @staticmethod
    def similarity(image_embedding: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """Per-sample mean over tokens of ``<f, u_j>``, shape ``(B,)``."""
        return torch.einsum("bd,btd->bt", image_embedding, null).mean(dim=1)

    def update(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """Run the Adam steps against ``image_embedding`` ``(B, D)``; returns the new ``u``."""
        f = image_embedding.detach().float()
        with torch.enable_grad():
            for _ in range(self.steps):
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.similarity(f, self.null).sum()
                loss.backward()
                self.optimizer.step()
        with torch.no_grad():
            self.last_similarity = self.similarity(f, self.null)
        return self.null.detach()
