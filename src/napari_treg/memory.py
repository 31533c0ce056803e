"""Accelerator memory: recognise out-of-memory errors, free memory, and say what to do."""

from __future__ import annotations

import gc
from typing import Callable, TypeVar

import torch

from .errors import OutOfMemoryError

_T = TypeVar("_T")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an accelerator out-of-memory error (CUDA, or MPS / others by message)."""
    cuda_oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if cuda_oom is not None and isinstance(error, cuda_oom):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def free_accelerator_memory() -> None:
    """Collect garbage and return cached accelerator memory to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    backend = getattr(torch.backends, "mps", None)
    if mps is not None and backend is not None and backend.is_available():
        mps.empty_cache()


def guard_memory(work: Callable[[], _T]) -> _T:
    """Run ``work()``; an out-of-memory error frees memory and becomes :class:`OutOfMemoryError`.

    The new error is raised outside the ``except`` block, so no traceback keeps
    the failed run's tensors alive.
    """
    try:
        return work()
    except Exception as error:  # noqa: BLE001 - only out-of-memory errors are translated
        if not is_out_of_memory(error):
            raise
        detail = " ".join(str(error).split())[:200] or type(error).__name__
    free_accelerator_memory()
    raise OutOfMemoryError(
        f"out of memory ({detail}). The memory was released; try a smaller batch_size, "
        "the low-memory mode (load_model(..., low_memory=True)) or tiling (tile_size), a smaller image, "
        "or device='cpu'"
    )
