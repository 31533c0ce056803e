"""``restore_many``: restore a folder of images or the planes of a stack on a dask cluster.

The client resolves every path once (workers may run in other folders), plans the units,
computes the whole stack's intensity range (on the cluster), creates the output, has the
workers confirm which recorded units still stand (input and output digests) and submits one
task per unit not done; the workers read, restore and write their units and send back a
small record. Each unit's task is released as soon as its record has arrived, so a worker
that dies later takes no finished unit with it. See ``docs/scale-out.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from napari_treg.batch.cluster import CONNECT_TIMEOUT, checked_address, connect, default_workers, in_process_note
from napari_treg.batch.logs import RunLog, routed_logs
from napari_treg.batch.outputs import FolderOutput, ZarrOutput, open_output
from napari_treg.batch.ranges import stack_intensity_range
from napari_treg.batch.sources import ArraySource, Unit, open_source
from napari_treg.batch.units import Job, count_tiles, ensemble_maps, is_done, run_tile, run_unit
from napari_treg.engine.ensemble import EnsembleSettings, check_ensemble_noise
from napari_treg.engine.restore_settings import RestoreSettings, model_settings
from napari_treg.engine.restorer import MAX_SEED, noise_model_values
from napari_treg.errors import Cancelled, InvalidInputError, UnitOutOfMemory, cancel_checker
from napari_treg.models.options import ModelSettings
from napari_treg.operators import LinearOperator
from napari_treg.solver.conflict import TextConflict

#: ``restore`` keywords a batch run does not take (it shows no previews; the model is loaded by each worker)
NOT_BATCH_SETTINGS = ("preview_every", "low_memory")
#: the run options not in a run's parameters under their own name (the seed is; previews are not made)
NOT_PARAMETERS = ("schedule", "preview_every", "seed")
POLL_SECONDS = 0.05


@dataclass
class BatchReport:
    """What a batch run did; updated while it runs (``on_unit`` sees it)."""

    output: str
    units: int
    skipped: int = 0  # done by an earlier run
    computed: int = 0  # done by this run
    failed: dict[str, str] = field(default_factory=dict)  # unit name -> one-line error
    seconds: float = 0.0
    dashboard: str | None = None
    workers: int = 0
    intensity_range: tuple[float, float] | None = None
    records: list[dict] = field(default_factory=list)  # of the units computed by this run
    log: str | None = None  # the run's log: dask's messages and each failed unit's traceback
    note: str | None = None  # how the cluster differs from the one asked for (a worker thread in this process)

    @property
    def done(self) -> int:
        return self.skipped + self.computed

    @property
    def text_conflicts(self) -> int:
        """Units of this run whose prompt contradicted their measurement (``info["text_conflict"]``)."""
        return sum(TextConflict.of(record).flag for record in self.records)

    @property
    def holdout_verdicts(self) -> dict[str, str]:
        """The held-out check's verdict line of each unit of this run that made one, by name."""
        return {record["name"]: record["holdout"]["verdict"] for record in self.records if record.get("holdout")}

    @property
    def too_few_steps(self) -> dict | None:
        """The ensembles' ``info["calibration"]`` when they had too few steps for a calibrated spread (the
        same for every unit of a run), else None."""
        calibrations = ((record.get("ensemble") or {}).get("calibration") or {} for record in self.records)
        return next((calibration for calibration in calibrations if calibration.get("below")), None)

    @property
    def ok(self) -> bool:
        """Every unit is done (by this run or an earlier one) and none failed."""
        return not self.failed and self.done == self.units


def restore_many(
    source: Any,
    output: str,
    operator: LinearOperator,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    on_start: Callable[[BatchReport], None] | None = None,
    on_unit: Callable[[BatchReport, str, str | None], None] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    samples: int | None = None,
    holdout: float | None = None,
    **settings: Any,
) -> BatchReport:
    """Restore every file of a folder (or glob), or every plane of a stack, on a dask cluster.

    Parameters
    ----------
    source : str, path or array
        A folder or glob of image files (one unit per file, restored as ``napari-treg restore``
        restores it); a zarr array or OME-Zarr image path; or a zarr, dask or NumPy array such
        as a napari layer's data (one unit per plane of the leading axes; plane ``k`` uses
        seed ``seed + k`` and the whole stack's intensity range, as local ``restore`` does).
    output : str
        A folder for files; a ``.zarr`` path for arrays. Rerunning on it resumes.
    operator : LinearOperator
        The forward model, as for :func:`napari_treg.restore`. One that couples planes (a 3-D PSF,
        ``VolumeBlur``) restores each file as one z-stack; with ``tile_size`` (and no ``samples``)
        each Y-X tile of a larger stack is a task of its own, blended as local ``restore`` blends it.
    workers : int, optional
        Workers of the embedded local cluster (default: one per GPU, else one per CPU core).
    scheduler : str, optional
        Address of a running dask scheduler to use instead (``tcp://host:8786``); ``workers``
        cannot be given with it.
    client : distributed.Client, optional
        A connected client to use instead (it is not closed).
    on_start, on_unit : callable, optional
        ``on_start(report)`` once the units are planned; ``on_unit(report, name, error)`` after
        each unit (``error`` None on success). Raising from them stops the run (resumable).
    cancel : threading.Event or callable, optional
        Polled while waiting; when set, the run stops (resumable) and Cancelled is raised.
    connect_timeout : float
        Seconds to wait for ``scheduler`` to answer before ClusterUnreachable is raised.
    samples : int, optional
        An ensemble of this many restorations per unit (:func:`napari_treg.ensemble`, streamed):
        the unit's output is their mean, and its ``std``, ``data_share`` (and with a prompt and
        guidance > 0 ``text_influence``) maps are written beside it (``docs/scale-out.md``).
        Unit ``p`` (plane number, 0 for files) then uses seed ``seed + p * samples``.
    holdout : float, optional
        With ``samples``: each unit's ensemble first checks its spread on this share of its measured
        values and corrects it (:func:`napari_treg.ensemble`'s ``holdout``); each unit's record holds
        the check (``record["holdout"]``, with its verdict line).
    **settings
        Any keyword of :func:`napari_treg.restore` (``steps``, ``model``, ``seed``, ``tile_size``,
        ``intensity_range``, ...) except ``progress``, ``preview_every`` and ``cancel``.

    Returns
    -------
    BatchReport
        Units done, skipped and failed (by name), the dashboard link and the time taken. A unit
        that fails is reported here, not raised.

    Raises
    ------
    InvalidInputError
        The source, the output, the operator, the cluster choice or a setting cannot be used
        (the message names it); all are checked on the client before any worker starts.
    ClusterUnreachable
        ``scheduler`` did not answer within ``connect_timeout``.
    Cancelled
        ``cancel`` was set; the units written so far stay, and a rerun resumes.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from napari_treg.batch import restore_many
    >>> from napari_treg.operators import GaussianBlur
    >>> stack = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     report = restore_many(stack, folder + "/out.zarr", GaussianBlur(1.0), workers=1, model="analytic", steps=4)
    >>> report.computed, report.failed
    (2, {})
    """
    started = time.perf_counter()
    model, restore_settings, intensity_range = checked_settings(settings)
    if holdout is not None and samples is None:
        raise InvalidInputError("holdout needs samples (the held-out check is made on an ensemble)")
    ensemble = None if samples is None else EnsembleSettings(samples=samples, keep_samples=False, holdout=holdout)
    if not isinstance(operator, LinearOperator):
        raise InvalidInputError(f"operator must be one of napari_treg.operators, got {operator!r}")
    check_cluster_choice(workers, scheduler, client)
    data = open_source(absolute(source), restore_settings.run.rgb)
    if operator.couples_planes and isinstance(data, ArraySource):
        raise InvalidInputError(
            f"{operator!r} restores whole z-stacks, and an array's units are its planes: "
            "give a folder of files, one z-stack each (each file is one unit, solved as one volume)"
        )
    target = open_output(absolute(output), data, ensemble_maps(restore_settings, ensemble))
    units = data.units()
    check_batch_ensemble(restore_settings, ensemble, len(units))  # before any cluster starts or file is written
    check_companions(target, data, operator, source_paths(source))
    report = BatchReport(output=os.fspath(output), units=len(units))
    size = workers if workers is not None or client is not None or scheduler else min(default_workers(), len(units))
    with routed_logs() as log, connect(size, scheduler, client, connect_timeout) as (active, embedded):
        report.dashboard = getattr(active, "dashboard_link", None)
        report.workers = len(active.scheduler_info().get("workers", {}))
        report.note = in_process_note(active) if embedded else None
        job = Job(operator, model, restore_settings, None, threads=1 if embedded else None, ensemble=ensemble)
        job = with_intensity_range(job, data, intensity_range, active)
        report.intensity_range = job.intensity_range
        recorded = prepare_output(target, data, operator, job)
        log.open(target.log_path())
        report.log = str(log.path)
        done = still_done(active, data, target, [unit for unit in units if unit.key in recorded], recorded)
        todo = [unit for unit in units if unit.key not in done]
        report.skipped = len(units) - len(todo)
        tiles = tile_counts(active, data, todo, job)
        if on_start is not None:
            on_start(report)
        run_units(active, data, target, todo, job, report, on_unit, cancel, log, tiles)
    report.seconds = time.perf_counter() - started
    return report


def absolute(path: Any) -> Any:
    """A path (or glob) made absolute here, once: workers resolve relative paths against their own folder."""
    return os.path.abspath(path) if isinstance(path, (str, os.PathLike)) else path


def check_cluster_choice(workers: int | None, scheduler: str | None, client: Any) -> None:
    """Refuse ``workers`` with a running cluster (it would be ignored) and a malformed scheduler address."""
    if workers is not None and (scheduler is not None or client is not None):
        raise InvalidInputError(
            "workers sets the size of the embedded local cluster: leave it out with a scheduler or client "
            "(their workers are started with the cluster)"
        )
    if scheduler is not None:
        checked_address(scheduler)


def still_done(client, data, target, recorded_units: list[Unit], records: dict[str, dict]) -> set[str]:
    """The keys of the recorded units whose input and output still match their records (checked by the workers)."""
    futures = [
        client.submit(is_done, data.unit_source(unit), target, unit, records[unit.key], pure=False)
        for unit in recorded_units
    ]
    try:
        answers = client.gather(futures)
    finally:
        client.cancel(futures)
    return {unit.key for unit, done in zip(recorded_units, answers) if done}


def checked_settings(settings: dict[str, Any]) -> tuple[ModelSettings, RestoreSettings, Any]:
    """``restore`` keywords -> (model, restore settings, intensity range), every settings object built
    here, on the client: an unknown name or a bad value fails before any worker starts."""
    values = dict(settings)
    refused = [name for name in NOT_BATCH_SETTINGS if name in values]
    if refused:
        raise InvalidInputError(f"a batch run does not take {', '.join(refused)}")
    model = {name: values.pop(name) for name in ("model", "device", "dtype") if name in values}
    if not isinstance(model.get("model", ModelSettings.model), (str, os.PathLike)):
        raise InvalidInputError("model must be a name or path for a batch run: every worker loads it once itself")
    if "model" in model:
        model["model"] = os.fspath(model["model"])
    intensity_range = values.pop("intensity_range", None)
    values.update(noise_model_values(values.pop("noise_model", None)))  # a PoissonGaussian -> its run options
    return model_settings(model), RestoreSettings.from_values(values), intensity_range


def with_intensity_range(job: Job, data, intensity_range: Any, client) -> Job:
    """The job with its intensity range: the given one, or the whole stack's, computed on the cluster."""
    if intensity_range is None and isinstance(data, ArraySource):
        with client.as_current():
            intensity_range = stack_intensity_range(data.as_dask())
            if not np.all(np.isfinite(intensity_range)):
                refuse_non_finite(data)
    if intensity_range is None:
        return job
    return dataclasses.replace(job, intensity_range=(float(intensity_range[0]), float(intensity_range[1])))


def refuse_non_finite(data: ArraySource) -> None:
    """InvalidInputError naming the planes with NaN or infinite pixels (as local ``restore`` refuses them)."""
    import dask.array as da

    planes = data.as_dask()
    leading = len(data.layout.leading)
    counts = np.asarray((~da.isfinite(planes)).sum(axis=tuple(range(leading, planes.ndim))).compute())
    bad = {unit.name: int(counts[unit.index] if unit.index else counts) for unit in data.units()}
    named = [f"{name} ({count})" for name, count in bad.items() if count]
    raise InvalidInputError(
        f"source has {sum(bad.values())} NaN or infinite pixel(s), in {len(named)} plane(s): "
        f"{', '.join(named[:5])}{', ...' if len(named) > 5 else ''}: replace them first, e.g. np.nan_to_num"
    )


def run_parameters(data, operator: LinearOperator, job: Job) -> dict[str, Any]:
    """Everything that decides the output: a rerun on the same output must match it."""
    return {
        "source": data.describe(),
        "operator": operator_description(operator),
        "model": job.model.model,
        "device": job.model.device,
        "dtype": job.model.dtype,
        "seed": job.seed,
        "samples": job.ensemble.samples if job.ensemble is not None else None,
        **({"holdout": job.ensemble.holdout} if job.ensemble is not None and job.ensemble.holdout else {}),
        "intensity_range": list(job.intensity_range) if job.intensity_range else None,
        **{k: v for k, v in job.settings.as_values().items() if k not in NOT_PARAMETERS},
    }


def operator_description(operator: LinearOperator) -> str:
    """The operator's repr plus a digest of its arrays (masks and kernels are not in the repr)."""
    digest = hashlib.sha256()
    for name, value in sorted(vars(operator).items()):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, np.ndarray):
            digest.update(name.encode() + np.ascontiguousarray(value).tobytes())
    return f"{operator!r} #{digest.hexdigest()[:16]}"


def check_batch_ensemble(settings: RestoreSettings, ensemble: EnsembleSettings | None, units: int) -> None:
    """What every unit's ensemble would refuse, refused once on the client: a noise it cannot use, and
    seeds that overflow (unit ``p`` uses ``seed + p * samples`` and the ``samples`` seeds after it)."""
    if ensemble is None:
        return
    if settings.run.noise is not None:
        check_ensemble_noise(settings.run.noise)
    if settings.run.seed + units * ensemble.samples - 1 > MAX_SEED:
        raise InvalidInputError(
            f"seed + units * samples must stay below {MAX_SEED + 1} (unit p uses seeds from seed + p * samples): "
            "use a smaller seed"
        )


def source_paths(source: Any) -> list[str]:
    """Where the source lies on disk (a path, or a zarr array's local store), for the outputs' checks."""
    if isinstance(source, (str, os.PathLike)):
        return [os.path.abspath(source)]
    root = getattr(getattr(source, "store", None), "root", None)
    return [os.fspath(root)] if root is not None else []


def check_companions(target, data, operator: LinearOperator, inputs: list[str]) -> None:
    """Every map beside the outputs planned and checked (InvalidInputError naming it), before any work."""
    if isinstance(target, FolderOutput):
        target.check_companions(data)
    else:
        target.check_companions(data, operator.image_hw(data.layout.hw), inputs)


def prepare_output(target, data, operator: LinearOperator, job: Job) -> dict[str, dict]:
    """Create or check the output; returns the records of the units already done."""
    params = run_parameters(data, operator, job)
    if isinstance(target, FolderOutput):
        return target.prepare(data, params)
    assert isinstance(target, ZarrOutput) and isinstance(data, ArraySource)
    return target.prepare(data, params, operator.image_hw(data.layout.hw))


def tile_counts(client, data, todo: list[Unit], job: Job) -> dict[str, int]:
    """The Y-X tiles of each z-stack to restore, by unit key, when its tiles are units of their own
    (:attr:`Job.splits_volumes`; counted by the workers, which read the files); else none."""
    if not job.splits_volumes or not todo:
        return {}
    futures = [client.submit(count_tiles, data.unit_source(unit), unit, job, pure=False) for unit in todo]
    try:
        counts = client.gather(futures)
    finally:
        client.cancel(futures)
    return {unit.key: count for unit, count in zip(todo, counts) if count > 1}


def run_units(
    client,
    data,
    target,
    todo: list[Unit],
    job: Job,
    report: BatchReport,
    on_unit,
    cancel,
    log: RunLog,
    tiles: dict[str, int] | None = None,
) -> None:
    """Submit the units, follow them as they finish; on any interruption cancel the rest, then re-raise.

    ``tiles``: z-stacks cut into this many Y-X tiles (by unit key): each tile is a task of its own
    (:func:`run_tile`, on any worker) and the unit's task blends them once all are solved.
    """
    from distributed import as_completed

    if not todo:
        target.finish(target.records(), complete=report.ok)
        return
    tiles = tiles or {}

    # no scattered data: a worker that dies would take it along; every task carries what it needs
    def submit(unit: Unit, **placement: Any):
        source = data.unit_source(unit)
        pieces = [
            client.submit(run_tile, source, unit, job, index, pure=False, **placement)
            for index in range(tiles.get(unit.key, 0))
        ]  # passed on worker to worker: the client never holds a tile
        return client.submit(run_unit, source, target, unit, job, *pieces, pure=False, **placement)

    futures = {submit(unit): unit for unit in todo}
    retried: set[str] = set()
    is_cancelled = cancel_checker(cancel)
    try:
        waiting = as_completed(futures, loop=client.loop)
        while not waiting.is_empty():
            if is_cancelled():
                raise Cancelled("the batch run was cancelled; rerun it to resume")
            batch = waiting.next_batch(block=False)
            if not batch:
                time.sleep(POLL_SECONDS)
            for future in batch:
                unit = futures.pop(future)
                retry = retry_elsewhere(client, future, unit, retried, submit)
                if retry is None:
                    collect(future, unit, report, on_unit, log)
                else:
                    futures[retry] = unit
                    waiting.add(retry)
                future.release()  # done and recorded: a worker that dies now loses nothing to recompute
    finally:
        client.cancel(list(futures))
        target.finish(target.records(), complete=report.ok)


def retry_elsewhere(client, future, unit: Unit, retried: set[str], submit) -> Any:
    """A unit that ran out of memory on one worker is submitted once more, to another worker if there is one.

    ``submit(unit, **placement)`` submits it; returns the new future, or None when the outcome stands.
    """
    if future.status != "error" or unit.key in retried or not isinstance(future.exception(), UnitOutOfMemory):
        return None
    retried.add(unit.key)
    failed_on = future.exception().worker
    others = [address for address in client.scheduler_info().get("workers", {}) if address != failed_on]
    return submit(unit, workers=others or None, allow_other_workers=not others)


def collect(future, unit: Unit, report: BatchReport, on_unit, log: RunLog) -> None:
    """Count one finished unit (or its error: one line by name, the traceback in the log) and tell ``on_unit``."""
    error = None
    if future.status == "error":
        exc = future.exception()
        error = " ".join(f"{type(exc).__name__}: {exc}".split())
        report.failed[unit.name] = error
        log.failure(unit.name, exc, future.traceback())
    else:
        report.records.append(future.result())
        report.computed += 1
    if on_unit is not None:
        on_unit(report, unit.name, error)
