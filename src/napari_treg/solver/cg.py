"""Data consistency: a batched conjugate gradient for ``(A^T W A + lam I) x = A^T W y + lam x0``.

``W`` is the identity for one Gaussian noise level; for per-value noise it is the diagonal of data
weights ``floor / var(A x0)`` of :class:`~napari_treg.solver.noise_weights.NoiseVariance`, taken at
the current estimate ``x0``.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from napari_treg.operators import LinearOperator


def system_dot(a: torch.Tensor, b: torch.Tensor, planes: int) -> torch.Tensor:
    """Inner products of each system of ``planes`` consecutive planes (1: each plane; a volume's depth: each
    volume), repeated over its planes: shaped ``(B, 1, 1, 1)`` for broadcasting."""
    if planes == 1:
        return (a * b).flatten(1).sum(dim=1).view(-1, 1, 1, 1)
    per_system = (a * b).reshape(len(a) // planes, -1).sum(dim=1)
    return per_system.repeat_interleave(planes).view(-1, 1, 1, 1)


def conjugate_gradient(
    apply: callable,
    rhs: torch.Tensor,
    x: torch.Tensor,
    iterations: int,
    *,
    planes: int = 1,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Solve ``apply(x) = rhs`` (symmetric positive definite) for each system of a batch.

    Starts at ``x``, runs a fixed number of iterations (no host synchronisation),
    and stops updating a system once its residual is exactly zero. ``planes``: each run of that
    many consecutive planes is one system (a volume: one inner product over its planes); 1: each plane.
    ``check()`` is called before every iteration (it may raise, e.g. :class:`~napari_treg.errors.Cancelled`).
    """
    dot = functools.partial(system_dot, planes=planes)
    r = rhs - apply(x)
    p = r.clone()
    rr = dot(r, r)
    for _ in range(iterations):
        if check is not None:
            check()
        ap = apply(p)
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rr / pap.clamp_min(torch.finfo(pap.dtype).tiny), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = dot(r, r)
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
    weights: torch.Tensor | None = None,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """``argmin_x ||y - A x||_W^2 + lam ||x - x0||^2`` by CG started at ``x0``.

    ``weights``: ``W`` per measured value, shaped like ``y`` (None: ``W = I``, the plain solve).
    An operator that couples planes (``couples_planes``, e.g. a 3-D blur) is solved per volume
    (``system_planes``: the whole batch, or each of its stacked volumes); any other, plane by plane.
    ``check``: see :func:`conjugate_gradient`.
    """
    planes = operator.system_planes(len(x0))
    if weights is None:
        rhs = operator.adjoint(y) + lam * x0
        apply = lambda v: operator.normal(v) + lam * v  # noqa: E731
        return conjugate_gradient(apply, rhs, x0, iterations, planes=planes, check=check)
    rhs = operator.adjoint(weights * y) + lam * x0

    def weighted(v):
        return operator.adjoint(weights * operator.forward(v)) + lam * v

    return conjugate_gradient(weighted, rhs, x0, iterations, planes=planes, check=check)
