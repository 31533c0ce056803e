"""The dask cluster a batch run uses: a given client or scheduler, or an embedded local cluster.

The embedded cluster has one worker per GPU (dask-cuda's ``LocalCUDACluster``, when it is
installed and GPUs are present), otherwise one single-threaded worker process per CPU core.
Its dashboard listens on a free port.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from napari_treg.errors import InvalidInputError

#: dask settings of the embedded cluster's workers: no MALLOC_TRIM_THRESHOLD_=65536 (distributed's nanny exports
#: it; it fixes glibc's mmap threshold, so every tensor over 128 KiB is mapped and page-faulted anew) and no
#: statistical profiler (it samples the sampler's Python loop every 10 ms). With both, a 128x128 50-step unit took a
#: median 19.6 s in a worker against 2.3 s without (docs/scale-out.md).
WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ": {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1},
    "distributed.worker.profile.enabled": False,
}


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers() -> int:
    """One worker per GPU, else one per CPU core."""
    return gpu_count() or max(1, os.cpu_count() or 1)


def local_cluster(workers: int | None = None):
    """A new local cluster: one worker per GPU with dask-cuda, else single-threaded worker processes."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidInputError(f"workers must be a whole number >= 1, got {workers!r}")
    import dask

    with dask.config.set(WORKER_CONFIG):
        if gpu_count():
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                pass
            else:
                return LocalCUDACluster(n_workers=workers or gpu_count(), threads_per_worker=1, dashboard_address=":0")
        from distributed import LocalCluster

        return LocalCluster(
            n_workers=workers or default_workers(), threads_per_worker=1, processes=True, dashboard_address=":0"
        )


@contextmanager
def connect(workers: int | None = None, scheduler: str | None = None, client=None) -> Iterator[tuple[Any, bool]]:
    """``(client, embedded)``: the given client, one for ``scheduler``, or one of a new local cluster.

    A client or cluster made here is closed on exit and never becomes dask's default (napari's own
    dask computations, e.g. of a layer's data, keep their scheduler); a given client is left as it is.
    """
    if client is not None:
        if scheduler is not None:
            raise InvalidInputError("give either client or scheduler, not both")
        yield client, False
        return
    from distributed import Client

    if scheduler is not None:
        with Client(scheduler, set_as_default=False) as own:
            yield own, False
        return
    with local_cluster(workers) as cluster, Client(cluster, set_as_default=False) as own:
        yield own, True


def slurm_cluster(
    *, gpus: int = 1, memory: str = "32GB", walltime: str = "04:00:00", queue: str | None = None, **options
):
    """A dask-jobqueue ``SLURMCluster`` whose jobs each run one single-threaded worker on ``gpus`` GPUs.

    Scale it with ``cluster.scale(jobs=N)`` (or ``cluster.adapt(maximum_jobs=N)``) and pass
    ``Client(cluster)`` as ``client=`` to :func:`~napari_treg.batch.restore_many`. ``options`` go to
    ``SLURMCluster`` (``account``, ``job_extra_directives``, ``job_script_prologue``, ...).
    """
    from dask_jobqueue import SLURMCluster

    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    directives += list(options.pop("job_extra_directives", []))
    return SLURMCluster(
        cores=1,
        processes=1,
        memory=memory,
        walltime=walltime,
        queue=queue,
        job_extra_directives=directives,
        **options,
    )
