"""The work of one unit, run on a dask worker: read it, restore it, write it, report a small record.

Nothing but the record (a few numbers) travels back to the client. :func:`restore_unit`
is the one place that calls the restoration engine.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_treg.batch.sources import Unit
from napari_treg.engine.maps import ensemble_map_names
from napari_treg.errors import OutOfMemoryError, TRegError, UnitOutOfMemory
from napari_treg.operators import LinearOperator

if TYPE_CHECKING:
    from napari_treg.engine.ensemble import EnsembleSettings
    from napari_treg.engine.restore_settings import RestoreSettings
    from napari_treg.engine.restorer import Run, TilePiece
    from napari_treg.engine.run_info import EnsembleInfo, RunInfo
    from napari_treg.models.options import ModelSettings

_LOADED: list = []  # the priors this process has loaded, to check they load once per worker
_RESTORERS: dict = {}  # this process's engine for the current job, keyed by model, settings and text


@dataclass(frozen=True)
class Job:
    """Everything a unit needs besides its data: the same for every unit of a run."""

    operator: LinearOperator
    model: ModelSettings
    settings: RestoreSettings  # text, method settings and run options, checked on the client
    intensity_range: tuple[float, float] | None  # None: each unit's own (files)
    threads: int | None  # torch threads per worker; None: leave as the cluster set it
    ensemble: EnsembleSettings | None = None  # samples per unit (streamed); None: one restoration per unit

    @property
    def seed(self) -> int:
        return self.settings.run.seed

    def unit_seed(self, unit: Unit) -> int:
        """The unit's seed: ``seed + plane``, or with an ensemble of S samples ``seed + plane * S``
        (its sample k then uses ``seed + plane * S + k``: no two units share a seed)."""
        return self.seed + unit.plane * (self.ensemble.samples if self.ensemble is not None else 1)

    @property
    def splits_volumes(self) -> bool:
        """Whether a tiled z-stack's Y-X tiles are units of their own: a volume solve (the operator couples
        planes) with ``tile_size``, one restoration per unit (an ensemble's volume stays one unit)."""
        return self.operator.couples_planes and self.settings.run.tile_size is not None and self.ensemble is None

    def map_names(self) -> tuple[str, ...]:
        """The maps each unit writes beside its output (:func:`ensemble_maps`)."""
        return ensemble_maps(self.settings, self.ensemble)


def ensemble_maps(settings: RestoreSettings, ensemble: EnsembleSettings | None) -> tuple[str, ...]:
    """The ensemble maps of a run with these restore settings (:func:`napari_treg.engine.maps.ensemble_map_names`:
    with the held-out check also ``uncorrected_std``); none without an ensemble."""
    return () if ensemble is None else ensemble_map_names(settings.uses_text, ensemble.holdout is not None)


def run_unit(source, output, unit: Unit, job: Job, *pieces: TilePiece) -> dict[str, Any]:
    """Restore one unit and write it (data first, then its record); returns the record.

    ``pieces``: the unit is a z-stack whose Y-X tiles were solved by :func:`run_tile` tasks (all of
    them); they are blended here as a local tiled run blends them (:meth:`Restorer.assemble_tiles`).
    A unit whose record and output already match its input (a task rerun after its worker died
    once it had finished) is not computed again: its record is returned and nothing is written.
    """
    with torch_thread_count(job.threads):
        return computed_unit(source, output, unit, job, *pieces)


@contextmanager
def torch_thread_count(threads: int | None) -> Iterator[None]:
    """torch's thread count set to ``threads`` (None: left) while a unit runs, then set back (a worker thread
    in napari's process, :func:`napari_treg.batch.cluster.in_process_cluster`, leaves napari's count as it was)."""
    import torch

    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(previous)


def computed_unit(source, output, unit: Unit, job: Job, *pieces: TilePiece) -> dict[str, Any]:
    """:func:`run_unit` at the job's thread count."""
    image = source.read(unit)
    digest = array_digest(image)
    previous = output.record(unit)
    if previous is not None and previous.get("input_digest") == digest and output.holds(unit, previous):
        return previous
    try:
        restored, run_info, maps = restore_unit(
            image, job, job.unit_seed(unit), recorded_noise_defaults(source, unit, job), *pieces
        )
    except OutOfMemoryError as error:  # the engine has freed the memory; another worker may have more
        message = str(error)  # raised below, outside this handler, without the original attached
    else:
        record = unit_record(unit, run_info, digest)
        if pieces:
            record["tile_units"] = len(pieces)  # solved as this many tasks, blended by this one
        return output.write(unit, image, restored, unit_info(run_info), record, maps)
    raise UnitOutOfMemory(message, worker_address())


def count_tiles(source, unit: Unit, job: Job) -> int:
    """How many Y-X tiles the unit's z-stack is cut into (1: it fits one tile); run on a worker."""
    plan = unit_run(source, unit, job).plan
    return 1 if plan is None else plan.count


def run_tile(source, unit: Unit, job: Job, index: int) -> TilePiece:
    """Solve tile ``index`` of the unit's z-stack (:meth:`Restorer.solve_tile`); the piece goes to the
    unit's :func:`run_unit` task, not to the client."""
    with torch_thread_count(job.threads):
        run = unit_run(source, unit, job)
        try:
            return worker_restorer(job).solve_tile(run, index)
        except OutOfMemoryError as error:
            message = str(error)
    raise UnitOutOfMemory(message, worker_address())


def unit_run(source, unit: Unit, job: Job) -> Run:
    """The engine's checked plan of the unit's restoration (its seed, the job's intensity range, its file's
    recorded camera values), read from its source."""
    from napari_treg.engine.restorer import prepare

    options = replace(job.settings.run, seed=job.unit_seed(unit))
    noise_defaults = recorded_noise_defaults(source, unit, job)
    return prepare(source.read(unit), job.operator, options, job.intensity_range, noise_defaults)


def array_digest(image: np.ndarray) -> str:
    """A content digest of a unit's input as read: shape, dtype and every value."""
    digest = hashlib.sha256(f"{image.shape}{image.dtype.str}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def is_done(source, output, unit: Unit, record: dict[str, Any]) -> bool:
    """Whether ``record`` stands: the unit's input is unchanged (same digest) and its output is complete.

    Run on a worker when a run resumes; an input that cannot be read counts as not done (the unit
    is then submitted and fails with its own error).
    """
    try:
        return record.get("input_digest") == array_digest(source.read(unit)) and output.holds(unit, record)
    except Exception:  # noqa: BLE001 - any failure to read means the unit must run again
        return False


def recorded_noise_defaults(source, unit: Unit, job: Job) -> Any:
    """The camera values the unit's file records (OME metadata), when the job asks for the Poisson-Gaussian
    model; None otherwise, and for sources that are not files."""
    if job.settings.run.noise_model != "poisson-gaussian" or not hasattr(source, "noise_defaults"):
        return None
    return source.noise_defaults(unit)


def restore_unit(
    image: np.ndarray, job: Job, seed: int, noise_defaults: Any = None, *pieces: TilePiece
) -> tuple[np.ndarray, RunInfo | EnsembleInfo, dict[str, np.ndarray]]:
    """The restoration of one unit by this worker's engine for the job, its record, and its maps by name.

    With ``job.ensemble``: the ensemble's mean, its record and its maps (:meth:`Job.map_names`).
    ``noise_defaults``: the camera values its file records (:func:`recorded_noise_defaults`).
    With ``pieces``: the unit's solved tiles blended (:meth:`Restorer.assemble_tiles`).
    """
    restorer = worker_restorer(job)
    run = replace(job.settings.run, seed=seed)
    if pieces:
        from napari_treg.engine.restorer import prepare

        prepared = prepare(image, job.operator, run, job.intensity_range, noise_defaults)
        restoration = restorer.assemble_tiles(prepared, list(pieces))
        return restoration.image, restoration.run_info, {}
    if job.ensemble is None:
        restoration = restorer.restore(
            image, job.operator, options=run, intensity_range=job.intensity_range, noise_defaults=noise_defaults
        )
        return restoration.image, restoration.run_info, {}
    from napari_treg.engine.ensemble import restorer_ensemble

    result = restorer_ensemble(
        restorer,
        image,
        job.operator,
        options=job.ensemble,
        run_options=run,
        intensity_range=job.intensity_range,
        noise_defaults=noise_defaults,
    )
    maps = {name: getattr(result, name) for name in job.map_names()}
    missing = [name for name, array in maps.items() if array is None]
    if missing:
        raise TRegError(f"the ensemble returned no {', '.join(missing)} map")
    return result.mean, result.run_info, maps


def worker_restorer(job: Job) -> Any:
    """This process's :class:`~napari_treg.engine.restorer.Restorer` for the job (its texts embedded once)."""
    prior = worker_prior(job)
    key = (id(prior), job.settings.config, job.settings.text)
    if key not in _RESTORERS:
        _RESTORERS.clear()  # one job at a time per worker: keep only the current engine
        _RESTORERS[key] = job.settings.restorer(prior)
    return _RESTORERS[key]


def worker_address() -> str | None:
    """The address of the dask worker running this task (None outside a worker)."""
    from distributed import get_worker

    try:
        return get_worker().address
    except ValueError:
        return None


def worker_prior(job: Job):
    """The job's model, from this process's model cache (loaded by the first unit only)."""
    from napari_treg.models import load_model

    model = job.model
    prior = load_model(model.model, device=model.device, dtype=model.dtype)
    if not any(prior is seen for seen in _LOADED):
        _LOADED.append(prior)
    return prior


def torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def unit_info(run_info: RunInfo | EnsembleInfo) -> dict[str, Any]:
    """The unit's ``info`` as written beside its output: a restore's, or an ensemble's as its mean's
    (:meth:`~napari_treg.engine.ensemble.Ensemble.restoration_info`)."""
    from napari_treg.engine.run_info import EnsembleInfo

    return run_info.restoration_dict() if isinstance(run_info, EnsembleInfo) else run_info.as_dict()


def unit_record(unit: Unit, run_info: RunInfo | EnsembleInfo, input_digest: str) -> dict[str, Any]:
    """The per-unit provenance kept with the output: which unit and input, seed, residual, time, where
    (and an ensemble's own info: its seeds, noise, prior sd, calibration note and held-out check, also under
    ``holdout`` where it made one)."""
    from napari_treg.engine.run_info import EnsembleInfo

    if isinstance(run_info, EnsembleInfo):
        single, held_out = run_info.as_restoration(), run_info.holdout
    else:
        single, held_out = run_info, None
    conflict = single.text_conflict
    record = {
        "key": unit.key,
        "input_digest": input_digest,
        "name": unit.name,
        "plane": unit.plane,
        "seed": single.seed,
        **{key: getattr(single, key) for key in ("model", "device", "dtype")},  # as the worker loaded it
        "residual": single.residual,
        "residual_over_noise": single.residual_over_noise,
        "intensity_range": list(single.intensity_range),
        "seconds": single.seconds,
        "text_conflict": None if conflict is None else conflict.as_dict(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "torch_threads": torch_threads(),  # bit-identity with local restore needs the same count
        "models_loaded": len(_LOADED),
    }
    if isinstance(run_info, EnsembleInfo):
        record["ensemble"] = run_info.restoration_dict()["ensemble"]  # as the unit's info holds it
    if held_out:
        record["holdout"] = held_out
    return record
