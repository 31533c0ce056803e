"""Divergence detection that does not stall the GPU.

Asking the GPU "is this tensor finite?" makes the host wait for every queued kernel. The
sampler instead keeps, on the device, the first step whose latent was not finite, and reads
that number rarely: on CUDA through a non-blocking copy that is only looked at once it has
arrived (so the host never waits inside the loop), elsewhere every ``every`` steps. The error
names the step where the run diverged, however late it is noticed.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_treg.errors import DivergenceError

ADVICE = "try float32 if the model runs in float16 (dtype='float32'), a larger cg_lambda or fewer CG iterations"
#: what to do when a returned result is not finite
RESULT_ADVICE = (
    "nothing was returned or written; try a smaller guidance, a larger cg_lambda or fewer CG iterations, "
    "or dtype='float32' if the model runs in float16"
)


def check_finite(values: np.ndarray | torch.Tensor, what: str, advice: str = RESULT_ADVICE) -> None:
    """Raise :class:`DivergenceError` if ``values`` (a result) holds NaN or inf; ``what`` names it."""
    if isinstance(values, torch.Tensor):
        bad = int((~torch.isfinite(values)).sum()) if values.is_floating_point() or values.is_complex() else 0
        total = values.numel()
    else:
        array = np.asarray(values)
        bad = int(np.count_nonzero(~np.isfinite(array))) if array.dtype.kind in "fc" else 0
        total = array.size
    if bad:
        raise DivergenceError(f"{what} has {bad} NaN or infinite value(s) of {total}: {advice}")


class DivergenceWatch:
    """Remembers the first step with a NaN or infinite latent; raises :class:`DivergenceError`."""

    def __init__(self, device: torch.device, total: int, every: int | None = None):
        self.total = total
        self.device = torch.device(device)
        self.every = every if every is not None else _default_every(self.device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=self.device)
        self._asynchronous = self.device.type == "cuda"
        self._copy: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None

    def observe(self, z: torch.Tensor, index: int) -> None:
        """Record step ``index`` (0-based) as the first bad one if ``z`` is not finite."""
        bad = ~torch.isfinite(z).all()
        self.first_bad = torch.where(bad & (self.first_bad < 0), index, self.first_bad)
        if (index + 1) % self.every == 0:
            self.check(wait=False)

    def check(self, wait: bool = True) -> None:
        """Raise if a bad step was seen. ``wait=False`` on CUDA looks only at a copy that has arrived."""
        if self._asynchronous and not wait:
            self._poll()
        else:
            self._raise_if_bad(int(self.first_bad))

    def _poll(self) -> None:
        if self._copied is not None and self._copied.query():
            self._raise_if_bad(int(self._copy))
        if self._copy is None:
            self._copy = torch.empty((), dtype=torch.int64, pin_memory=True)
        if self._copied is None or self._copied.query():
            self._copy.copy_(self.first_bad, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()

    def _raise_if_bad(self, first_bad: int) -> None:
        if first_bad >= 0:
            raise DivergenceError(
                f"the sampler diverged (NaN or inf) at step {first_bad + 1} of {self.total}: {ADVICE}"
            )


def _default_every(device: torch.device) -> int:
    """Reading a CPU tensor costs nothing; other accelerators (MPS) wait, so read them rarely."""
    if device.type in ("cpu", "cuda"):
        return 1
    return 10
