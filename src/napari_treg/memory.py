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


#: the most planes solved together when ``batch_size="auto"``
AUTO_BATCH_MAX = 4
#: accelerator memory of a float16 Stable Diffusion solve beyond the weights, per restored pixel:
#: once per solve (the VAE, which takes one image of a batch at a time, and the CUDA-graph pool)
#: and per plane of a batch (the UNet's activations); float32 needs twice as much.
#: From peak reserved memory at 512x512, batch 1, 2 and 4, on an H200 (2.46, 2.67 and 2.89 GiB
#: beyond the weights, recording included: docs/performance.md, benchmarks/gpu_memory.py).
SOLVE_BYTES_PER_PIXEL = 9472
PLANE_BYTES_PER_PIXEL = 640


def auto_batch_size(planes: int, image_hw: tuple[int, int], dtype: torch.dtype, free_bytes: int | None) -> int:
    """How many planes to solve together: up to :data:`AUTO_BATCH_MAX`, as many as fit in ``free_bytes``.

    ``free_bytes`` is None on the CPU (and other devices that do not report free memory): one at a
    time, since batching does not speed up a CPU.
    """
    if free_bytes is None or planes <= 1:
        return 1
    scale = 1 if dtype in (torch.float16, torch.bfloat16) else 2
    pixels = image_hw[0] * image_hw[1]
    spare = free_bytes - scale * SOLVE_BYTES_PER_PIXEL * pixels
    fits = int(spare // (scale * PLANE_BYTES_PER_PIXEL * pixels))
    return max(1, min(planes, AUTO_BATCH_MAX, fits))


def free_bytes(device: torch.device) -> int | None:
    """Memory a CUDA device can still give (free plus what torch holds unused); None elsewhere."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    unused_cache = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = free + unused_cache
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # a cap set by the user
    if fraction is not None:
        available = min(available, fraction(device) * total - torch.cuda.memory_allocated(device))
    return max(0, int(available))
