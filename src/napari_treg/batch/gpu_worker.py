"""A dask nanny preload: worker ``i`` of a job sees only the job's ``i``-th GPU (``--preload-nanny``).

``dask worker --nworkers N`` names its workers ``NAME-0`` ... ``NAME-(N-1)``; each nanny sets
``CUDA_VISIBLE_DEVICES`` of its worker process to the matching entry of the job's own
``CUDA_VISIBLE_DEVICES`` (as SLURM sets it for ``--gres=gpu:N``), or to ``i`` when it is unset.
It goes into the nanny's own ``env`` (applied inside its worker process), not ``pre_spawn_env``:
the nannies of one job share a process, and ``pre_spawn_env`` is written into that process's
``os.environ`` before each spawn, so two workers starting together could both see the last one's GPU.
:func:`napari_treg.batch.cluster.slurm_cluster` adds it to
jobs with more than one GPU.
"""

from __future__ import annotations

import os
from typing import Any


def gpu_for(name: str, visible: str | None) -> str | None:
    """The GPU of the worker called ``name`` (``...-i``), from the job's ``CUDA_VISIBLE_DEVICES``."""
    index = str(name).rsplit("-", 1)[-1]
    if not index.isdigit():
        return None
    devices = [d.strip() for d in (visible or "").split(",") if d.strip()]
    return devices[int(index) % len(devices)] if devices else index


def dask_setup(nanny: Any) -> None:
    """Called by dask in each nanny before it starts its worker process."""
    gpu = gpu_for(nanny.name, os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpu is not None:
        nanny.env["CUDA_VISIBLE_DEVICES"] = gpu
