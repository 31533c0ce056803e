"""One restoration run as the restore widget starts it, without Qt.

The widget reads its form into a :class:`RestoreRequest` on the main thread;
:func:`run_request` is what its thread worker executes: load (or reuse) the model,
restore, then compute the optional residual and ground-truth metrics, and hand an
:class:`Outcome` back. (Not to be confused with a batch unit's ``Job`` in
:mod:`napari_treg.batch.units`.)
"""

from __future__ import annotations

import threading
import time
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from napari_treg.engine.ensemble import Ensemble, EnsembleSettings, check_ensemble, restorer_ensemble
from napari_treg.engine.restore_settings import RestoreSettings
from napari_treg.engine.restorer import Progress, Restorer, prepare
from napari_treg.errors import Cancelled, InvalidInputError
from napari_treg.imaging.metrics import ground_truth_metrics
from napari_treg.models.base import DiffusionPrior
from napari_treg.models.loading import warn_if_slow
from napari_treg.models.options import ModelSettings
from napari_treg.operators import LinearOperator
from napari_treg.plugin.layers import Planes, reference_for
from napari_treg.plugin.warmup import PhaseClock, import_run_modules, imports_for

#: progress(event) after every sampling step; status(message, fraction) while loading
StepProgress = Callable[[Progress], None]
Status = Callable[[str, "float | None"], None]


class ModelHolder:
    """The model a widget keeps between runs.

    :meth:`release` frees it (the widget calls it when it closes or the model choice
    changes); asked while a run uses the model, the release waits until the run ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.key: ModelSettings | None = None
        self.prior: DiffusionPrior | None = None
        self._busy = False
        self._release_pending = False

    @contextmanager
    def use(self, model: ModelSettings, status: Status | None = None) -> Iterator[DiffusionPrior]:
        """The loaded model for ``model``, loading it (and dropping another) if needed."""
        with self._lock:
            self._busy = True
        try:
            yield self._get(model, status)
        finally:
            with self._lock:
                self._busy = False
                pending, self._release_pending = self._release_pending, False
            if pending:
                self.release()

    def _get(self, key: ModelSettings, status: Status | None) -> DiffusionPrior:
        from napari_treg.models import load_model

        if self.prior is not None and self.key == key:
            return self.prior
        self._free()
        prior = load_model(key.model, device=key.device, dtype=key.dtype, progress=status, low_memory=key.low_memory)
        self.key, self.prior = key, prior
        return prior

    def release(self) -> None:
        """Forget the model and free its memory (GPU memory included), now or after the current run."""
        with self._lock:
            if self._busy:
                self._release_pending = True
                return
        self._free()

    def _free(self) -> None:
        held, self.key, self.prior = self.prior, None, None
        if held is not None:
            from napari_treg.models import release_model

            release_model(held)  # other cached models (a console script's) stay loaded


@dataclass
class RestoreRequest:
    """Everything one run needs, read from the widget on the main thread (every setting already checked)."""

    planes: Planes
    operator: LinearOperator
    model: ModelSettings
    #: text, method settings and run options (``settings.run.rgb`` says whether the planes are colour)
    settings: RestoreSettings
    residual: bool = False
    reference: np.ndarray | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    #: the caller's handle on the input (the widget keeps its napari layer here)
    source: Any = None
    #: provenance that restore does not see (operator choice, layer names)
    record: dict = field(default_factory=dict)
    #: restorations of the measurement: 1 = one restore; more = an ensemble (:mod:`napari_treg.engine.ensemble`)
    samples: int = 1
    #: the share of measured values the ensemble's held-out check hides (None: no check)
    holdout: float | None = None

    @property
    def rgb(self) -> bool:
        """Whether the planes' last axis is colour."""
        return bool(self.settings.run.rgb)


@dataclass
class Outcome:
    """What a finished run hands back to the main thread."""

    result: np.ndarray
    info: dict
    residual: np.ndarray | None = None
    metrics: dict | None = None
    #: every distinct warning raised during the run, in order (shown as notifications)
    warnings: list[str] = field(default_factory=list)
    #: seconds spent loading the model (0 when it was already loaded)
    load_seconds: float = 0.0
    #: the ensemble's maps (``result`` is then its mean), for a request with ``samples`` > 1
    ensemble: Ensemble | None = None


def run_request(
    request: RestoreRequest, holder: ModelHolder, progress: StepProgress | None = None, status: Status | None = None
) -> Outcome:
    """Load or reuse the model, restore, then compute residual and metrics (runs in a worker thread).

    Warnings raised meanwhile (e.g. a prompt cut to the text encoder's length) are collected
    in :attr:`Outcome.warnings` for the main thread to show.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = _restore(request, holder, progress, status)
    for message in dict.fromkeys(str(warning.message) for warning in caught):
        outcome.warnings.append(message)
    return outcome


def _restore(
    request: RestoreRequest, holder: ModelHolder, progress: StepProgress | None, status: Status | None
) -> Outcome:
    if request.cancel.is_set():
        raise Cancelled("cancelled before the start")
    started = time.perf_counter()
    with ExitStack() as run:
        with PhaseClock(status or (lambda message, fraction: None)) as clock:  # each phase with its elapsed time
            import_run_modules(imports_for(request.model.model), clock)
            clock(f"loading model {request.model.model}", None)
            prior = run.enter_context(holder.use(request.model, clock))
        load_seconds = time.perf_counter() - started
        if status is not None:
            status("restoring", 0.0)
        warn_if_slow(prior)
        restorer = request.settings.restorer(prior)
        if request.samples > 1:
            outcome = ensemble_outcome(restorer, request, progress)
        else:
            data, operator, options = request.planes.data, request.operator, request.settings.run
            restoration = restorer.restore(data, operator, options=options, callback=progress, cancel=request.cancel)
            outcome = Outcome(restoration.image, restoration.info, residual=restoration.residual)
    outcome.load_seconds = load_seconds
    result = outcome.result
    if not request.residual:
        outcome.residual = None
    if request.reference is not None:
        try:
            reference = reference_for(request.reference, result.shape, request.planes)
            outcome.metrics = ground_truth_metrics(result, reference, request.rgb)
        except InvalidInputError as error:
            outcome.warnings.append(f"no PSNR/SSIM: {error}")
    return outcome


def ensemble_options(request: RestoreRequest) -> EnsembleSettings:
    """The request's ensemble settings: its samples (range checked by :class:`EnsembleSettings`), streamed."""
    return EnsembleSettings(samples=request.samples, keep_samples=False, holdout=request.holdout)


def check_ensemble_request(request: RestoreRequest) -> None:
    """Refuse, on the main thread, an ensemble the engine would refuse (samples, seeds, noise level)."""
    check_ensemble(prepare(request.planes.data, request.operator, request.settings.run), ensemble_options(request))


def ensemble_outcome(restorer: Restorer, request: RestoreRequest, progress: StepProgress | None) -> Outcome:
    """The ensemble of the request through the widget's restorer; the outcome's result is its mean.

    ``info`` is :meth:`~napari_treg.engine.ensemble.Ensemble.restoration_info`.
    """
    maps = restorer_ensemble(
        restorer,
        request.planes.data,
        request.operator,
        options=ensemble_options(request),
        run_options=request.settings.run,
        callback=progress,
        cancel=request.cancel,
    )
    return Outcome(maps.mean, maps.restoration_info(), residual=maps.residual, ensemble=maps)
