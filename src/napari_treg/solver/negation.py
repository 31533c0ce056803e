"""Adaptive negation: null-text optimisation in CLIP space.

The null (negative) text embedding ``u`` is moved away from the concept that
the current estimate shows: the loss is the mean over token rows ``u_j`` of
``<f, u_j>``, with ``f`` the unit CLIP image embedding of the data-consistent
estimate, minimised by ``steps`` Adam steps at every data-consistency step. As in
the authors' code, each data-consistency step starts a new Adam optimiser: ``u``
carries over to later steps, Adam's moments and step count do not. ``u`` is kept
in float32 whatever the model's dtype (Adam's eps underflows in float16).

Closed form. The loss is linear in ``u``: its gradient ``g = f / T`` (T token rows)
is the same at every Adam step. From zero moments, after k steps with a constant
gradient, ``m_k = (1 - b1^k) g`` and ``v_k = (1 - b2^k) g^2``, so the bias-corrected
moments are exactly ``g`` and ``g^2`` and every step moves ``u`` by
``-lr g / (|g| + eps)``. One data-consistency step is therefore
``u <- u - steps * lr * g / (|g| + eps)``: about ``steps * lr`` against ``sign(f)``.
"""

from __future__ import annotations

import torch

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults (they cancel in the closed form)
EPS = 1e-8  # torch.optim.Adam's default eps


class AdaptiveNegation:
    """Holds the optimised null embedding across sampler steps (the Adam state does not carry over)."""

    def __init__(self, null: torch.Tensor, lr: float, steps: int):
        self.null = null.detach().float().clone()
        self.lr = lr
        self.steps = steps
        self.last_similarity: torch.Tensor | None = None

    @staticmethod
    def similarity(image_embedding: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """Per-sample mean over tokens of ``<f, u_j>``, shape ``(B,)``."""
        return torch.einsum("bd,btd->bt", image_embedding, null).mean(dim=1)

    def update(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """``steps`` fresh Adam steps against ``image_embedding`` ``(B, D)``; returns the new ``u``."""
        f = image_embedding.detach().float()
        grad = (f / self.null.shape[1])[:, None, :]  # d/du_j of mean_j <f, u_j>, the same for every row
        self.null -= (self.steps * self.lr) * grad / (grad.abs() + EPS)
        self.last_similarity = self.similarity(f, self.null)
        return self.null
