"""Memory: recognise allocation failures of every device, free memory, and say what to do.

One recogniser, :func:`allocation_failure`, tells an allocation failure from any other error:
numpy's ``MemoryError``, torch's CPU allocator (``DefaultCPUAllocator: can't allocate memory``),
CUDA (``torch.cuda.OutOfMemoryError`` or "CUDA out of memory") and MPS ("MPS backend out of
memory"). :func:`out_of_memory_error` turns one into :class:`~napari_treg.errors.OutOfMemoryError`
with one clear line; :func:`guard_memory` and the command line use it.

torch is only looked at when it is already imported (an error cannot come from torch otherwise),
so the command line can use the recogniser before torch is loaded.
"""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Callable, TypeVar

from napari_treg.errors import OutOfMemoryError

if TYPE_CHECKING:
    import torch

_T = TypeVar("_T")

#: what an allocator's message says when it failed (lower case), by the memory it ran out of
HOST_MESSAGES = ("defaultcpuallocator", "can't allocate memory", "not enough memory", "cannot allocate memory")
ACCELERATOR_MESSAGES = ("out of memory",)  # CUDA ("CUDA out of memory", "CUDA error: out of memory"), MPS
HOST_ADVICE = "try a smaller image or stack, a smaller super-resolution factor, or tiling (tile_size)"
ACCELERATOR_ADVICE = (
    "try a smaller batch_size, the low-memory mode (load_model(..., low_memory=True)) or tiling (tile_size), "
    "a smaller image, or device='cpu'"
)


def allocation_failure(error: BaseException) -> str | None:
    """``"host"`` or ``"accelerator"`` if ``error`` is a failed memory allocation, else None."""
    torch = sys.modules.get("torch")
    cuda_oom = getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    if cuda_oom is not None and isinstance(error, cuda_oom):
        return "accelerator"
    if isinstance(error, MemoryError):
        return "host"
    if not isinstance(error, RuntimeError):
        return None
    text = str(error).lower()
    if any(message in text for message in HOST_MESSAGES):
        return "host"
    if any(message in text for message in ACCELERATOR_MESSAGES):
        return "accelerator"
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is a failed memory allocation on any device (see :func:`allocation_failure`)."""
    return allocation_failure(error) is not None


def out_of_memory_error(error: BaseException) -> OutOfMemoryError:
    """The :class:`OutOfMemoryError` (one line: what failed and what to do) for an allocation failure."""
    if isinstance(error, OutOfMemoryError):
        return error
    where = allocation_failure(error) or "host"
    detail = " ".join(str(error).split())[:200] or type(error).__name__
    advice = HOST_ADVICE if where == "host" else ACCELERATOR_ADVICE
    memory = "host memory" if where == "host" else "accelerator memory"
    return OutOfMemoryError(f"out of {memory} ({detail}). The memory was released; {advice}")


def available_host_bytes() -> int | None:
    """Host memory available to a new allocation without swapping (Linux ``MemAvailable``); None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_accelerator_memory() -> None:
    """Collect garbage and return cached accelerator memory to the driver."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    backend = getattr(torch.backends, "mps", None)
    if mps is not None and backend is not None and backend.is_available():
        mps.empty_cache()


def guard_memory(work: Callable[[], _T]) -> _T:
    """Run ``work()``; an allocation failure frees memory and becomes :class:`OutOfMemoryError`.

    The new error is raised outside the ``except`` block, so no traceback keeps
    the failed run's tensors alive.
    """
    try:
        return work()
    except Exception as error:  # noqa: BLE001 - only allocation failures are translated
        if not is_out_of_memory(error) or isinstance(error, OutOfMemoryError):
            raise
        replacement = out_of_memory_error(error)
    free_accelerator_memory()
    raise replacement


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
    import torch

    if free_bytes is None or planes <= 1:
        return 1
    scale = 1 if dtype in (torch.float16, torch.bfloat16) else 2
    pixels = image_hw[0] * image_hw[1]
    spare = free_bytes - scale * SOLVE_BYTES_PER_PIXEL * pixels
    fits = int(spare // (scale * PLANE_BYTES_PER_PIXEL * pixels))
    return max(1, min(planes, AUTO_BATCH_MAX, fits))


def free_bytes(device: torch.device) -> int | None:
    """Memory a CUDA device can still give (free plus what torch holds unused); None elsewhere."""
    import torch

    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    unused_cache = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    available = free + unused_cache
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # a cap set by the user
    if fraction is not None:
        available = min(available, fraction(device) * total - torch.cuda.memory_allocated(device))
    return max(0, int(available))
