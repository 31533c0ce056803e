"""The work of one unit, run on a dask worker: read it, restore it, write it, report a small record.

Nothing but the record (a few numbers) travels back to the client. :func:`restore_unit`
is the one place that calls the restoration engine.
"""

from __future__ import annotations

import hashlib
import os
import socket
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

    def map_names(self) -> tuple[str, ...]:
        """The maps each unit writes beside its output (:func:`ensemble_maps`)."""
        return ensemble_maps(self.settings, self.ensemble)


def ensemble_maps(settings: RestoreSettings, ensemble: EnsembleSettings | None) -> tuple[str, ...]:
    """The ensemble maps of a run with these restore settings (:func:`napari_treg.engine.maps.ensemble_map_names`:
    with the held-out check also ``uncorrected_std``); none without an ensemble."""
    return () if ensemble is None else ensemble_map_names(settings.uses_text, ensemble.holdout is not None)


def run_unit(source, output, unit: Unit, job: Job) -> dict[str, Any]:
    """Restore one unit and write it (data first, then its record); returns the record.

    A unit whose record and output already match its input (a task rerun after its worker died
    once it had finished) is not computed again: its record is returned and nothing is written.
    """
    if job.threads:
        import torch

        torch.set_num_threads(job.threads)
    image = source.read(unit)
    digest = array_digest(image)
    previous = output.record(unit)
    if previous is not None and previous.get("input_digest") == digest and output.holds(unit, previous):
        return previous
    try:
        restored, info, maps = restore_unit(image, job, job.unit_seed(unit))
    except OutOfMemoryError as error:  # the engine has freed the memory; another worker may have more
        message = str(error)  # raised below, outside this handler, without the original attached
    else:
        return output.write(unit, image, restored, info, unit_record(unit, info, digest), maps)
    raise UnitOutOfMemory(message, worker_address())


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


def restore_unit(image: np.ndarray, job: Job, seed: int) -> tuple[np.ndarray, dict, dict[str, np.ndarray]]:
    """The restoration of one unit by this worker's engine for the job, and its maps by name.

    With ``job.ensemble``: the ensemble's mean, its info and its maps (:meth:`Job.map_names`).
    """
    restorer = worker_restorer(job)
    run = replace(job.settings.run, seed=seed)
    if job.ensemble is None:
        restored, info = restorer.restore(image, job.operator, options=run, intensity_range=job.intensity_range)
        return restored, info, {}
    from napari_treg.engine.ensemble import restorer_ensemble

    result = restorer_ensemble(
        restorer, image, job.operator, options=job.ensemble, run_options=run, intensity_range=job.intensity_range
    )
    maps = {name: getattr(result, name) for name in job.map_names()}
    missing = [name for name, array in maps.items() if array is None]
    if missing:
        raise TRegError(f"the ensemble returned no {', '.join(missing)} map")
    return result.mean, result.restoration_info(), maps


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


def unit_record(unit: Unit, info: dict[str, Any], input_digest: str) -> dict[str, Any]:
    """The per-unit provenance kept with the output: which unit and input, seed, residual, time, where
    (and an ensemble's own info: its seeds, noise, prior sd, calibration note and held-out check, also under
    ``holdout`` where it made one)."""
    record = {
        "key": unit.key,
        "input_digest": input_digest,
        "name": unit.name,
        "plane": unit.plane,
        "seed": info.get("seed"),
        **{key: info.get(key) for key in ("model", "device", "dtype")},  # as the worker loaded it
        "residual": info.get("residual"),
        "residual_over_noise": info.get("residual_over_noise"),
        "intensity_range": info.get("intensity_range"),
        "seconds": info.get("seconds"),
        "text_conflict": info.get("text_conflict"),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "torch_threads": torch_threads(),  # bit-identity with local restore needs the same count
        "models_loaded": len(_LOADED),
    }
    ensemble = info.get("ensemble")
    if ensemble:
        record["ensemble"] = {key: value for key, value in ensemble.items() if key != "text_conflict"}
        if ensemble.get("holdout"):
            record["holdout"] = ensemble["holdout"]
    return record
