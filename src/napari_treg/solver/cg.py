"""Data consistency: a batched conjugate gradient for ``(A^T A + lam I) x = A^T y + lam x0``."""

from __future__ import annotations

from typing import Callable

import torch

from napari_treg.operators import LinearOperator


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner products, shaped ``(B, 1, 1, 1)`` for broadcasting."""
    return (a * b).flatten(1).sum(dim=1).view(-1, 1, 1, 1)


def conjugate_gradient(
    apply: callable, rhs: torch.Tensor, x: torch.Tensor, iterations: int, check: Callable[[], None] | None = None
) -> torch.Tensor:
    """Solve ``apply(x) = rhs`` (symmetric positive definite) for each sample of a batch.

    Starts at ``x``, runs a fixed number of iterations (no host synchronisation),
    and stops updating a sample once its residual is exactly zero. ``check()`` is called before
    every iteration (it may raise, e.g. :class:`~napari_treg.errors.Cancelled`).
    """
    r = rhs - apply(x)
    p = r.clone()
    rr = _dot(r, r)
    for _ in range(iterations):
        if check is not None:
            check()
        ap = apply(p)
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rr / pap.clamp_min(torch.finfo(pap.dtype).tiny), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = _dot(r, r)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(rr.dtype).tiny), torch.zeros_like(rr))
        p = r + beta * p
        rr = rr_new
    return x


def data_consistency(
    operator: LinearOperator,
    y: torch.Tensor,
    x0: torch.Tensor,
    lam: float,
    iterations: int,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``argmin_x ||y - A x||^2 + lam ||x - x0||^2`` by CG started at ``x0`` (``check``: see above)."""
    rhs = operator.adjoint(y) + lam * x0
    return conjugate_gradient(lambda v: operator.normal(v) + lam * v, rhs, x0, iterations, check)
