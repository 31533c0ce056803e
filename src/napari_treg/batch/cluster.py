"""The dask cluster a batch run uses: a given client or scheduler, or an embedded local cluster.

The embedded cluster has one worker per GPU (dask-cuda's ``LocalCUDACluster``, when it is
installed and GPUs are present), otherwise one single-threaded worker process per CPU core.
Scheduler, workers and dashboard of the embedded cluster listen on 127.0.0.1 only (the dashboard on a
free port): nobody else on the network can see or control it. A given scheduler is checked before
connecting: a malformed address or one that does not answer within ``connect_timeout`` seconds is
refused with one line (:class:`ClusterUnreachable`, or InvalidInputError for a malformed address).
"""

from __future__ import annotations

import ast
import logging
import os
import re
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from napari_treg.errors import InvalidInputError, TRegError

#: seconds to wait for a given scheduler to answer (distributed's own default is 30 s)
CONNECT_TIMEOUT = 10.0
#: address schemes with a host and port (``inproc://`` is accepted as well)
NETWORK_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
#: the only interface the embedded cluster listens on
LOCALHOST = "127.0.0.1"


class ClusterUnreachable(TRegError, ConnectionError):
    """The given scheduler did not answer: nothing ran (the CLI exits with status 3)."""


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


#: why a local cluster is a worker thread in this process, and what that costs (measured: docs/scale-out.md)
IN_PROCESS_NOTE = "the units run one at a time in this process, on one worker thread ({why})"
UNGUARDED_REASON = (
    "worker processes would run {script} again: it has no 'if __name__ == \"__main__\":' guard; add one, "
    "or give a scheduler address, to use processes"
)
FAILED_REASON = "worker processes did not start: {error}; give a scheduler address to use processes"


def is_main_guard(node: ast.stmt) -> bool:
    """Whether a statement is ``if __name__ == "__main__":`` (either way round)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.ops) != 1:
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {side.id for side in sides if isinstance(side, ast.Name)}
    values = {side.value for side in sides if isinstance(side, ast.Constant)}
    return isinstance(node.test.ops[0], ast.Eq) and names == {"__name__"} and values == {"__main__"}


def unguarded_script() -> str | None:
    """The script that worker processes would run again, or None.

    Python starts worker processes by re-importing the main script when it was run by path
    (``python script.py``; not ``python -m``, the ``napari`` command or a notebook). One without an
    ``if __name__ == "__main__":`` guard would then open napari, and start a cluster, in every worker.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or not path or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as file:
            tree = ast.parse(file.read())
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return None
    return None if any(is_main_guard(node) for node in tree.body) else os.path.basename(path)


def in_process_cluster(why: str):
    """A local cluster of one worker thread in this process (torch keeps this process's thread count);
    ``why`` is said in :func:`in_process_note`."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.worker.profile.enabled": False}):  # see WORKER_CONFIG
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, silence_logs=logging.CRITICAL, dashboard_address=None
        )
    cluster.treg_note = IN_PROCESS_NOTE.format(why=why)
    return cluster


def in_process_note(client: Any) -> str | None:
    """What a client of :func:`in_process_cluster` says about its cluster, else None."""
    return getattr(getattr(client, "cluster", None), "treg_note", None)


def local_cluster(workers: int | None = None):
    """A new local cluster: one worker per GPU with dask-cuda, else single-threaded worker processes, or
    (from a script that worker processes would run again, :func:`unguarded_script`) a worker thread here."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InvalidInputError(f"workers must be a whole number >= 1, got {workers!r}")
    script = unguarded_script()
    if script is not None:
        return in_process_cluster(UNGUARDED_REASON.format(script=script))
    try:
        return process_cluster(workers)
    except (RuntimeError, TimeoutError, OSError) as error:  # e.g. "Nanny failed to start"
        return in_process_cluster(
            FAILED_REASON.format(error=" ".join(str(error).split())[:120] or type(error).__name__)
        )


def process_cluster(workers: int | None):
    """One worker per GPU with dask-cuda, else single-threaded worker processes, on 127.0.0.1."""
    import dask

    with dask.config.set(WORKER_CONFIG):
        if gpu_count():
            try:
                from dask_cuda import LocalCUDACluster
            except ImportError:
                pass
            else:
                return LocalCUDACluster(
                    n_workers=workers or gpu_count(),
                    threads_per_worker=1,
                    silence_logs=logging.CRITICAL,
                    host=LOCALHOST,
                    dashboard_address=f"{LOCALHOST}:0",
                )
        from distributed import LocalCluster

        return LocalCluster(
            n_workers=workers or default_workers(),
            threads_per_worker=1,
            processes=True,
            silence_logs=logging.CRITICAL,  # the workers' own log lines: the client logs each failure
            host=LOCALHOST,
            dashboard_address=f"{LOCALHOST}:0",
        )


def checked_address(address: Any) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of a scheduler address such as ``tcp://host:8786``; InvalidInputError if malformed.

    ``inproc://`` addresses (a cluster in this process) have no host and port: ``("inproc", "", 0)``.
    """
    from distributed.comm.addressing import parse_address, parse_host_port

    problem = InvalidInputError(f"scheduler {address!r} is not an address such as tcp://host:8786")
    if not isinstance(address, str) or not address.strip() or re.search(r"\s", address.strip()):
        raise problem
    try:
        scheme, location = parse_address(address.strip())
        if scheme == "inproc":
            return scheme, "", 0
        host, port = parse_host_port(location)
    except ValueError:
        raise problem from None
    if scheme not in NETWORK_SCHEMES or not re.fullmatch(r"[\w.\-]+|\[[0-9a-fA-F:.]+\]", host):
        raise problem
    if not 0 < int(port) < 65536:
        raise problem
    return scheme, host.strip("[]"), int(port)


def check_reachable(address: str, timeout: float) -> None:
    """Raise ClusterUnreachable, naming ``address``, unless its host accepts a connection within ``timeout`` s."""
    scheme, host, port = checked_address(address)
    if scheme == "inproc":
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise ClusterUnreachable(
            f"no dask scheduler answers at {address!r} within {timeout:g} s ({error.strerror or error}); "
            "nothing ran: start it (dask scheduler) or check the address"
        ) from None


def check_scheduler(address: str, timeout: float) -> None:
    """Raise ClusterUnreachable unless a dask scheduler answers its ``identity`` call within ``timeout`` s.

    Asked before a Client is made: a Client that fails half-way prints a ``Client.__del__`` traceback
    and waits for its own close. Something else listening on the port (not speaking dask's protocol)
    is refused here too.
    """
    import asyncio

    from distributed.core import rpc

    async def identify() -> dict:
        async with rpc(address, timeout=timeout) as scheduler:
            return await asyncio.wait_for(scheduler.identity(), timeout)

    try:
        identity = asyncio.run(identify())
    except BaseException as error:  # noqa: BLE001 - garbage on the wire raises anything (MemoryError included)
        if isinstance(error, KeyboardInterrupt):
            raise
        reason = type(error).__name__ if isinstance(error, MemoryError) else " ".join(str(error).split())[:120]
        raise ClusterUnreachable(
            f"no dask scheduler answers at {address!r} within {timeout:g} s ({reason or type(error).__name__}); "
            "nothing ran: check the address and port"
        ) from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        raise ClusterUnreachable(f"{address!r} is not a dask scheduler; nothing ran: check the address and port")


def scheduler_client(address: str, timeout: float = CONNECT_TIMEOUT):
    """A client of the scheduler at ``address``, connected within ``timeout`` s, or ClusterUnreachable."""
    from distributed import Client

    check_reachable(address, timeout)
    check_scheduler(address, timeout)
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ClusterUnreachable(f"the dask scheduler at {address!r} did not answer: {error}; nothing ran") from None


@contextmanager
def connect(
    workers: int | None = None, scheduler: str | None = None, client=None, connect_timeout: float = CONNECT_TIMEOUT
) -> Iterator[tuple[Any, bool]]:
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
        with scheduler_client(scheduler, connect_timeout) as own:
            yield own, False
        return
    with signals_held() as held:  # a cluster cut off half-started prints dask's tracebacks at exit
        cluster = local_cluster(workers)
        try:
            own = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
    with cluster, own:
        held.deliver()  # Ctrl-C or SIGTERM during the start: acted on now, and the cluster closes cleanly
        yield own, True


class HeldSignals:
    """The Ctrl-C and SIGTERM that arrived while held (:func:`signals_held`), to act on later."""

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.handlers: dict[int, Any] = {}

    def hold(self, signum: int, frame: object) -> None:
        """The first signal waits; a second one is acted on at once (a start that hangs can still be stopped)."""
        self.caught.append(signum)
        if len(self.caught) > 1:
            self.deliver()

    def deliver(self) -> None:
        """Act on the first signal held, as the handler in place before would have: the CLI's and Python's raise
        KeyboardInterrupt; the default action of SIGTERM ends the process."""
        import signal

        if not self.caught:
            return
        signum, self.caught = self.caught[0], []
        handler = self.handlers.get(signum)
        if callable(handler):
            handler(signum, None)
        elif handler in (signal.SIG_DFL, None):  # None: set outside Python; its default action then
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


@contextmanager
def signals_held() -> Iterator[HeldSignals]:
    """Within: Ctrl-C and SIGTERM are remembered, not acted on, so a local cluster's start is never cut off
    half-way; the caller acts on them with :meth:`HeldSignals.deliver` once the cluster can be closed. Outside
    the main thread (the napari dock's worker) nothing is held: signals reach the main thread only."""
    import signal
    import threading

    held = HeldSignals()
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    for signum in (signal.SIGINT, signal.SIGTERM):
        held.handlers[signum] = signal.signal(signum, held.hold)
    try:
        yield held
    finally:
        for signum, handler in held.handlers.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


def worker_exports() -> list[str]:
    """Shell lines giving a worker started elsewhere (a SLURM job) the embedded cluster's WORKER_CONFIG.

    The nanny's default ``MALLOC_TRIM_THRESHOLD_`` is unset explicitly (None): values from the
    environment are merged into dask's defaults, not replacing them.
    """
    environ = {"MALLOC_TRIM_THRESHOLD_": None, **WORKER_CONFIG["distributed.nanny.pre-spawn-environ"]}
    profile = WORKER_CONFIG["distributed.worker.profile.enabled"]
    return [
        f'export DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON="{environ!r}"',
        f"export DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED={profile!r}",
    ]


def slurm_cluster(
    *, gpus: int = 1, memory: str = "32GB", walltime: str = "04:00:00", queue: str | None = None, **options
):
    """A dask-jobqueue ``SLURMCluster`` whose jobs each run one single-threaded worker per GPU (``gpus`` per job).

    Scale it with ``cluster.scale(jobs=N)`` (or ``cluster.adapt(maximum_jobs=N)``) and pass
    ``Client(cluster)`` as ``client=`` to :func:`~napari_treg.batch.restore_many`. ``options`` go to
    ``SLURMCluster`` (``account``, ``job_extra_directives``, ``job_script_prologue``, ...). With a
    ``job_script_prologue`` (that activates a venv, say), workers run the ``python`` it puts first on
    the PATH; without one, this process's Python. Workers get the embedded cluster's
    :data:`WORKER_CONFIG`; with ``gpus > 1``, worker ``i`` of a job sees only the job's ``i``-th GPU.
    """
    from dask_jobqueue import SLURMCluster

    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise InvalidInputError(f"gpus must be a whole number >= 0, got {gpus!r}")
    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    directives += list(options.pop("job_extra_directives", []))
    prologue = list(options.pop("job_script_prologue", []))
    options.setdefault("python", "python" if prologue else sys.executable)
    extra = list(options.pop("worker_extra_args", []))
    if gpus > 1:
        extra += ["--preload-nanny", "napari_treg.batch.gpu_worker"]
    workers = max(gpus, 1)
    return SLURMCluster(
        cores=workers,
        processes=workers,
        memory=memory,
        walltime=walltime,
        queue=queue,
        job_extra_directives=directives,
        job_script_prologue=[*prologue, *worker_exports()],
        worker_extra_args=extra,
        **options,
    )
