"""Adaptive negation: null-text optimisation in CLIP space.

The null (negative) text embedding ``u`` is moved away from the concept that
the current estimate shows: the loss is the mean over token rows ``u_j`` of
``<f, u_j>``, with ``f`` the unit CLIP image embedding of the data-consistent
estimate, minimised by a few Adam steps. ``u`` is kept in float32 whatever the
model's dtype (Adam's eps underflows in float16).

The loss is linear in ``u``, so its gradient is known in closed form, ``f / T``
for every token row (T rows): the Adam steps are written out directly, without
autograd, and their moments are shared by all rows.
"""

from __future__ import annotations

import torch

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
EPS = 1e-8


class AdaptiveNegation:
    """Holds the optimised null embedding and its Adam state across sampler steps."""

    def __init__(self, null: torch.Tensor, lr: float, steps: int):
        self.null = null.detach().float().clone()
        self.lr = lr
        self.steps = steps
        self.step_count = 0
        self._m = torch.zeros_like(self.null[:, :1])  # (B, 1, D): the same for every token
        self._v = torch.zeros_like(self.null[:, :1])
        self.last_similarity: torch.Tensor | None = None

    @staticmethod
    def similarity(image_embedding: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
        """Per-sample mean over tokens of ``<f, u_j>``, shape ``(B,)``."""
        return torch.einsum("bd,btd->bt", image_embedding, null).mean(dim=1)

    def update(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """Run the Adam steps against ``image_embedding`` ``(B, D)``; returns the new ``u``."""
        f = image_embedding.detach().float()
        grad = (f / self.null.shape[1])[:, None, :]  # d/du_j of mean_j <f, u_j>
        beta1, beta2 = BETAS
        for _ in range(self.steps):
            self.step_count += 1
            self._m.mul_(beta1).add_(grad, alpha=1 - beta1)
            self._v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            m_hat = self._m / (1 - beta1**self.step_count)
            v_hat = self._v / (1 - beta2**self.step_count)
            self.null -= self.lr * m_hat / (v_hat.sqrt() + EPS)
        self.last_similarity = self.similarity(f, self.null)
        return self.null
