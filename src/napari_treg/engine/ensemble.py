"""Ensembles: many restorations of one measurement, and what they say about each pixel.

:func:`ensemble` restores a measurement ``samples`` times (sample ``k``, plane ``i`` with seed
``seed + k * planes + i``, as planes of one batch where memory allows) over the engine's
:class:`~napari_treg.engine.restorer.Restorer`, and returns an :class:`Ensemble`:

- ``mean`` and ``std`` over the samples (streamed, Welford/Chan, when the samples are not kept);
- ``data_share``: ``1 - posterior variance / prior variance`` per pixel, from the data step's
  linear system (:func:`napari_treg.solver.posterior.data_share`): 1 = measured, 0 = not seen;
- ``text_influence``: ``|mean with the prompt - mean without text|`` over the same seeds;
- ``interval(level)``, ``run_info`` (an :class:`~napari_treg.engine.run_info.EnsembleInfo`: seeds, noise and
  where it came from, settings, model calls, and ``text_conflict``: the text-conflict check of
  :mod:`napari_treg.solver.conflict` on every sample) and ``info``, its plain JSON.

The samples are calibrated, not just a loop over seeds: each one's last step is the noise-aware
data step of :mod:`napari_treg.solver.posterior` (perturb-and-MAP with the measurement's noise
sigma, given or estimated by :func:`napari_treg.imaging.noise.estimate_noise`). docs/uncertainty.md has
what the maps mean and the calibration on the exact analytic prior (benchmarks/calibration.py).
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np
import torch

from napari_treg.engine import holdout
from napari_treg.engine.calibration import ENSEMBLE_DC_UNTIL, calibration_info
from napari_treg.engine.restorer import (
    DATA_SHARE,
    MAX_SEED,
    Progress,
    ProgressCallback,
    Reporter,
    Restorer,
    Run,
    RunSettings,
    prepare,
    residual_map,
    run_options_from,
)
from napari_treg.engine.run_info import EnsembleInfo
from napari_treg.errors import CancelSignal, InvalidInputError, cancel_checker, raise_if
from napari_treg.imaging import layout as imaging
from napari_treg.imaging.noise import NoiseDefaults, estimate_noise
from napari_treg.memory import available_host_bytes, guard_memory
from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import LinearOperator
from napari_treg.settings import check_number, setting, spec_named, validate
from napari_treg.solver.config import TRegSettings
from napari_treg.solver.conflict import ConflictLog, TextConflict
from napari_treg.solver.divergence import check_finite
from napari_treg.solver.exchange import LOOK_AHEAD_STEPS, MAX_GROUP, PlaneExchange
from napari_treg.solver.noise_weights import NoiseVariance
from napari_treg.solver.posterior import (
    DATA_SHARE_PROBES,
    data_share,
    perturb_and_map,
    probes_per_solve,
    proximal_weight,
)

#: ``progress(done, solves)`` of the data share's probe solves
SolveProgress = Callable[[int, int], None]

#: the prior's standard deviation per pixel (model units) when neither the user nor the model gives one
DEFAULT_PRIOR_SD = 0.5
#: the last step's noise of the sample with seed ``s`` comes from ``numpy.random.default_rng([s, NOISE_STREAM])``
NOISE_STREAM = 19
#: seed of the data-share probes (the same map for the same measurement and settings)
PROBE_SEED = 0
#: the most samples of one ensemble
MAX_SAMPLES = 4096
#: the share of the host's available memory that kept samples may take
HOST_MEMORY_SHARE = 0.5
#: methods that call the model once per sampler step
MODEL_METHODS = ("treg", "psld")
#: the smallest noise sigma of an ensemble (model units, where the image spans [-1, 1]): float32 data
#: resolve about 1e-7 of their range, so a finer noise cannot be what is in the measurement
MIN_NOISE = 1e-6
#: the largest noise / prior_sd: the data steps weigh the data by (noise / prior_sd)^2, within cg_lambda's range
MAX_NOISE_OVER_PRIOR_SD = math.sqrt(float(spec_named(TRegSettings, "cg_lambda").maximum or 1.0))


@dataclass(frozen=True)
class EnsembleSettings:
    """How many samples, whether to keep them, and the prior's spread; creating one checks every value."""

    samples: int = setting(
        16,
        "restorations of the measurement (seeds seed, seed + 1, ...) whose mean, standard deviation and "
        "data share are written; at least 2",
        minimum=2,
        maximum=MAX_SAMPLES,
    )
    keep_samples: bool = setting(
        True, "keep every sample (memory grows with the number); otherwise mean and std are streamed"
    )
    prior_sd: float | None = setting(
        None,
        "the prior's standard deviation per pixel in model units, used by the noise-aware last step and "
        f"the data share; None: the model's own (the analytic prior's), else {DEFAULT_PRIOR_SD}",
        positive=True,
        maximum=10.0,
    )
    holdout: float | None = setting(
        None,
        "check the spread first on this fraction of the measured values, held out of an extra ensemble, and "
        "scale the spread of invented pixels by what it finds (docs/uncertainty.md); below 0.5, at least 4 samples",
        positive=True,
        maximum=0.5,
    )
    plane_exchange: bool = setting(
        True,
        "a z-stack under a 3-D PSF (VolumeBlur): the samples trade planes by the measurement's evidence at a "
        "few steps (napari_treg.solver.exchange), so a plane whose content the data decide is not stuck on "
        "the wrong side; one Gaussian noise level, untiled, method treg",
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.holdout is not None:
            holdout.check_options(self.holdout, self.samples)


@dataclass(frozen=True)
class Ensemble:
    """An ensemble's statistics, each shaped like ``restore``'s result and in its intensity units."""

    mean: np.ndarray
    std: np.ndarray
    samples: np.ndarray | None  # (samples, *shape), or None when streamed
    data_share: np.ndarray  # in [0, 1]
    text_influence: np.ndarray | None  # None without a prompt or with guidance 0
    run_info: EnsembleInfo
    residual: np.ndarray | None = None  # |A mean - y| per measured value (as Restoration.residual)
    uncorrected_std: np.ndarray | None = None  # with the held-out check: the std before its correction

    @functools.cached_property
    def info(self) -> dict[str, Any]:
        """``run_info`` as plain JSON (serialised once: the same dict on every access)."""
        return self.run_info.as_dict()

    def interval(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)``: the predictive interval ``mean +- t sqrt(1 + 1/n) std`` holding ``level`` of the values.

        ``t`` is Student's quantile with ``n - 1`` degrees of freedom (``n`` samples): for 32 samples
        and 0.9 the half-width is 1.72 std.
        """
        from scipy.stats import t

        level = check_number(level, "level", minimum=0.0, maximum=1.0)
        if not 0.0 < level < 1.0:
            raise InvalidInputError(f"level must be between 0 and 1 (exclusive), got {level!r}")
        count = self.run_info.samples
        half = float(t.ppf((1.0 + level) / 2.0, count - 1)) * math.sqrt(1.0 + 1.0 / count) * self.std
        return self.mean - half, self.mean + half

    def restoration_info(self) -> dict:
        """The mean's info as a single restore's (its text-conflict check on top), the ensemble's own under
        ``"ensemble"``: what the widget and the batch runner record for an ensemble's result
        (:meth:`EnsembleInfo.restoration_dict <napari_treg.engine.run_info.EnsembleInfo.restoration_dict>`)."""
        return self.run_info.restoration_dict()


class Moments:
    """Running mean and sum of squared deviations over samples (Chan et al.'s batched Welford update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None

    def add(self, batch: np.ndarray) -> None:
        """Add samples ``(k, ...)``."""
        batch = batch.astype(np.float64)
        k = len(batch)
        batch_mean = batch.mean(axis=0)
        batch_m2 = np.square(batch - batch_mean).sum(axis=0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = k, batch_mean, batch_m2
            return
        total = self.count + k
        delta = batch_mean - self.mean
        self.mean += delta * (k / total)
        self.m2 += batch_m2 + np.square(delta) * (self.count * k / total)
        self.count = total

    def std(self) -> np.ndarray:
        """The sample standard deviation (``n - 1`` in the denominator)."""
        assert self.m2 is not None
        return np.sqrt(self.m2 / max(1, self.count - 1))


# -- the public entry points --------------------------------------------------------------------


def restorer_ensemble(
    restorer: Restorer,
    image: Any,
    operator: LinearOperator,
    *,
    options: EnsembleSettings | None = None,
    run_options: RunSettings | None = None,
    intensity_range: tuple[float, float] | None = None,
    callback: ProgressCallback | None = None,
    cancel: CancelSignal = None,
    noise_defaults: NoiseDefaults | None = None,
    **run_values: Any,
) -> Ensemble:
    """:func:`ensemble` for front ends that already hold a :class:`Restorer` (its model, settings and text).

    ``run_options``: a ready :class:`~napari_treg.engine.restorer.RunSettings`, or its fields as keywords
    (``seed``, ``noise``, ``batch_size``, ...); ``noise_defaults``: see :func:`prepare`. The restorer itself
    is not changed.
    """
    started = time.perf_counter()
    options = options if options is not None else EnsembleSettings()
    run = prepare(image, operator, run_options_from(run_options, run_values), intensity_range, noise_defaults)
    return ensemble_prepared(restorer, run, options, callback, cancel, started)


def ensemble_prepared(
    restorer: Restorer,
    run: Run,
    options: EnsembleSettings,
    callback: ProgressCallback | None = None,
    cancel: CancelSignal = None,
    started: float | None = None,
) -> Ensemble:
    """The ensemble of a :class:`~napari_treg.engine.restorer.Run` made by :func:`prepare`."""
    started = time.perf_counter() if started is None else started
    restorer.check_noise_model(run)
    noise, noise_source = check_ensemble(run, options)
    is_cancelled = cancel_checker(cancel)
    raise_if(is_cancelled)
    prior_sd, prior_sd_source = prior_sd_of(restorer.prior, options, run.layout.channels)
    check_noise_over_prior_sd(noise, prior_sd, prior_sd_source)
    batch_size = restorer.batch_size(replicate(run, 0, options.samples, options.samples))
    cancel_check = functools.partial(raise_if, is_cancelled)
    trades = exchanges_planes(run, options, restorer.method)
    exchange = PlaneExchange(noise, prior_sd, cancel_check) if trades else None
    chunks = sample_chunks(options, batch_size, run, trades)
    main = calibrated(restorer, noise, prior_sd, run.variance, cancel_check, exchange)
    free = text_free(restorer)
    passes = [main] if free is None else [main, calibrated(free, noise, prior_sd, run.variance, cancel_check, exchange)]
    check = (
        None
        if options.holdout is None
        else holdout.HoldoutCheck.plan(run, options.holdout, noise, prior_sd, options.samples)
    )
    steps = functools.partial(pass_steps, run=run, chunks=chunks, batch_size=batch_size)
    calls = functools.partial(pass_model_calls, run=run, chunks=chunks, batch_size=batch_size)
    model_calls = sum(calls(r) for r in passes) + (0 if check is None else calls(main))
    extra = 0 if check is None else steps(main)  # the check's own pass
    relay = StepOffset(callback, extra + sum(steps(r) for r in passes))
    work = functools.partial(
        run_pass, run=run, chunks=chunks, batch_size=batch_size, relay=relay, samples=options.samples
    )
    corrections = None if check is None else holdout_pass(check, passes, work, is_cancelled, relay, restorer)
    if corrections is not None:
        passes = [correction.restorer for correction in corrections]
        main = passes[0]
    conflicts = restorer.conflict_log(run, (noise, noise_source))  # the prompted pass only, every sample
    moments, kept = guard_memory(
        lambda: work(main, keep=options.keep_samples, is_cancelled=is_cancelled, conflicts=conflicts)
    )
    free_mean = None
    if free is not None:
        free_moments, _ = guard_memory(lambda: work(passes[1], keep=False, is_cancelled=is_cancelled))
        assert free_moments is not None
        free_mean = free_moments.mean
    raise_if(is_cancelled)
    mean, std = guard_memory(lambda: statistics(moments, kept))
    share_sd = prior_sd if check is None else check.factor * prior_sd
    share = data_share_planes(restorer.prior, run, noise, share_sd, mean, cancel_check, share_progress(callback))
    raise_if(is_cancelled)
    if corrections is not None:
        mean, kept, free_mean = corrected(corrections, mean, kept, free_mean)
    seconds = time.perf_counter() - started
    run_info = EnsembleInfo(
        **sampling_info(run, options, noise_source, prior_sd_source),
        noise=noise,
        prior_sd=prior_sd,
        replaced=replaced_settings(restorer, main),
        text_influence=free is not None,
        text_conflict=text_conflict(restorer, conflicts, options.samples),
        model_calls=model_calls,
        seconds=seconds,
        seconds_per_sample=seconds / options.samples,
        settings=restorer.provenance(run, batch_size, mean, seconds),
        noise_model=None if run.noise_model is None else run.noise_model_info(),
        holdout=None if check is None else check.summary,
        calibration=calibration_info(restorer.config, restorer.method),
        plane_exchange=None if exchange is None else exchange.summary([count for _, count in chunks]),
    )
    layout = run.layout
    return Ensemble(
        mean=imaging.from_planes(mean.astype(np.float32), layout),
        std=imaging.from_planes(std.astype(np.float32), layout),
        samples=None if kept is None else guard_memory(lambda: samples_in_layout(kept, layout)),
        data_share=imaging.from_planes(share, layout),
        text_influence=None if free_mean is None else imaging.from_planes(influence(mean, free_mean), layout),
        run_info=run_info,
        residual=residual_map(run, mean.astype(np.float32)),
        uncorrected_std=None if corrections is None else imaging.from_planes(corrections[0].uncorrected_std(), layout),
    )


def holdout_pass(
    check: holdout.HoldoutCheck, passes: list[Restorer], work, is_cancelled, relay: StepOffset, restorer: Restorer
) -> list[holdout.Correction]:
    """The held-out check's own ensemble (without the held-out values) and the fit of its factor; returns the
    corrected last steps of ``passes`` (:mod:`napari_treg.engine.holdout`)."""
    started, first = time.perf_counter(), relay.done
    step = functools.partial(noise_aware_step, noise=check.noise, device=restorer.prior.device)
    predicting = check.predicting(passes[0], step)
    guard_memory(lambda: work(predicting, run=check.held_out_run(), keep=False, is_cancelled=is_cancelled))
    raise_if(is_cancelled)
    check.fit(time.perf_counter() - started, relay.done - first if restorer.method in MODEL_METHODS else 0)
    return [check.correction(p, step) for p in passes]


def corrected(
    corrections: list[holdout.Correction], mean: np.ndarray, kept: np.ndarray | None, free_mean: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Mean, kept samples and text-free mean with each pass's shared shift added."""
    shift = corrections[0].shift()
    kept = None if kept is None else (kept + shift[None]).astype(np.float32)
    free_mean = None if free_mean is None else free_mean + corrections[1].shift()
    return mean + shift, kept, free_mean


def samples_in_layout(kept: np.ndarray, layout: imaging.Layout) -> np.ndarray:
    """The kept samples ``(n, N, C, H, W)`` in the image's layout ``(n, *shape)``, written into one array."""
    first = imaging.from_planes(kept[0], layout)
    out = np.empty((len(kept), *first.shape), dtype=np.float32)
    out[0] = first
    for k in range(1, len(kept)):
        out[k] = imaging.from_planes(kept[k], layout)
    return out


def sampling_info(run: Run, options: EnsembleSettings, noise_source: str, prior_sd_source: str) -> dict:
    """How the samples were drawn: seeds, the rule behind them, and where the noise and prior sd came from."""
    return {
        "samples": options.samples,
        "keep_samples": options.keep_samples,
        "seeds": [run.options.seed + k * len(run.measured) for k in range(options.samples)],
        "seed_rule": "sample k of plane i: seed + k * planes + i (tiled: of tile t, seed + t * samples * planes "
        "+ k * planes + i); its last step's noise: "
        f"numpy.random.default_rng([that seed, {NOISE_STREAM}])",
        "noise_source": noise_source,
        "prior_sd_source": prior_sd_source,
        "last_step": "perturb-and-MAP (napari_treg.solver.posterior), in place of the final projection; "
        "with data-first re-noising the data steps use cg_lambda = noise^2 / prior_sd^2 (uncertainty.calibrated)",
        "data_share_probes": DATA_SHARE_PROBES,
    }


def text_conflict(restorer: Restorer, conflicts: ConflictLog | None, samples: int) -> TextConflict:
    """``info["text_conflict"]``: as a single restore's, over the planes/tiles of every sample of the prompted pass.

    Each sample's evidence comes from its own first data-consistency steps, so the result does
    not depend on how the samples were batched (``batch_size``, ``keep_samples``).
    """
    if conflicts is None:
        return TextConflict(reason=restorer.unchecked_reason())
    return replace(conflicts.conflict(), samples=samples)


def influence(with_text: np.ndarray, without_text: np.ndarray) -> np.ndarray:
    """``|mean with the prompt - mean without text|`` (float32)."""
    return np.abs(with_text - without_text).astype(np.float32)


# -- checks and settings --------------------------------------------------------------------------


def check_ensemble(run: Run, options: EnsembleSettings) -> tuple[float, str]:
    """Refuse, before any work, an ensemble whose seeds overflow, whose noise is not positive or cannot be
    estimated, or whose samples do not fit in memory; returns the noise sigma and where it came from."""
    units = len(run.measured) * (1 if run.plan is None else run.plan.count)
    if run.options.seed + options.samples * units - 1 > MAX_SEED:
        raise InvalidInputError(f"seed + samples * planes must stay below {MAX_SEED + 1}: use a smaller seed")
    if run.options.noise is not None:
        check_ensemble_noise(run.options.noise)
    if options.prior_sd is not None and run.options.noise is not None:
        check_noise_over_prior_sd(run.options.noise, options.prior_sd, "given")
    noise = measurement_noise(run)
    if options.holdout is not None:
        if run.noise_model is not None:
            raise InvalidInputError(
                "the held-out check does not weigh values by the Poisson-Gaussian model yet: "
                "use holdout with one Gaussian noise level, or no holdout"
            )
        holdout.hidden_map(run, options.holdout)  # refuses a run with too few values to hold out
    per_call = max(exchange_groups(options.samples)) if exchanges_planes(run, options, "treg") else 1
    needed = ensemble_host_bytes(run, options, per_call)
    available = available_host_bytes()
    if available is not None and needed > HOST_MEMORY_SHARE * available:
        hw = run.operator.image_hw(run.layout.hw)
        kept = "keeping " if options.keep_samples else ""
        raise InvalidInputError(
            f"{kept}{options.samples} samples of {len(run.measured)} plane(s) of {hw[0]}x{hw[1]} need "
            f"{needed / 2**30:.1f} GiB of host memory, "
            f"more than {HOST_MEMORY_SHARE:.0%} of the available memory ({available / 2**30:.1f} GiB): "
            + ("use keep_samples=False (mean and std are then streamed) or fewer samples" if kept else "use tiles")
        )
    return noise


def check_ensemble_noise(noise: float, option: str = "noise") -> None:
    """A given noise sigma an ensemble can use: at least :data:`MIN_NOISE` (InvalidInputError naming ``option``)."""
    if not noise >= MIN_NOISE:
        raise InvalidInputError(
            f"{option} must be > 0 (at least {MIN_NOISE:g}) for an ensemble (the measurement's noise sigma in "
            f"model units, where the image spans -1 to 1), got {noise!r}"
        )


def check_noise_over_prior_sd(noise: float, prior_sd: float, source: str) -> None:
    """Refuse a noise more than :data:`MAX_NOISE_OVER_PRIOR_SD` times the prior's sd (naming both settings)."""
    if noise > MAX_NOISE_OVER_PRIOR_SD * prior_sd:
        where = "prior_sd" if source == "given" else f"prior_sd (not given: {source})"
        raise InvalidInputError(
            f"noise {noise:g} is more than {MAX_NOISE_OVER_PRIOR_SD:g} times {where} {prior_sd:g}: the measurement "
            "would say nothing the prior does not; give a larger prior_sd or a smaller noise"
        )


#: host bytes per value of one sample (float32 planes) beyond the kept samples: the streamed or final
#: mean and spread (float64, two arrays and one temporary), one sample's solve results (float32, two copies)
STATISTICS_BYTES = 3 * 8 + 2 * 4
#: more bytes per value of one sample of a tiled run: the canvas that blends the tiles (float64 sum)
CANVAS_BYTES = 8
#: host bytes per value and probe of the data share's probe solves (CG state and the operator's temporaries;
#: 194 measured at 256x256 with 16 probes: benchmarks/ensemble_memory.py)
SHARE_BYTES = 200


def ensemble_host_bytes(run: Run, options: EnsembleSettings, per_call: int = 1) -> int:
    """Host memory an ensemble allocates beyond what its single restore does (bytes): the kept samples
    and their copy in the image's layout (4 + 4 bytes a value), the statistics, and the larger of: a solve
    call's results of ``per_call`` samples (and its tiles' canvas), the data share's probe solves (which
    come after the samples). benchmarks/ensemble_memory.py measures it."""
    hw = run.operator.image_hw(run.layout.hw)
    values = len(run.measured) * run.layout.channels * hw[0] * hw[1]  # one sample
    kept = 2 * 4 * options.samples * values if options.keep_samples else 0
    call = per_call * values * (2 * 4 + (CANVAS_BYTES if run.plan is not None else 0))
    image_values = run.layout.channels * hw[0] * hw[1]
    share = probes_per_solve(image_values) * image_values * SHARE_BYTES
    return kept + STATISTICS_BYTES * values + max(call, share)


def measurement_noise(run: Run) -> tuple[float, str]:
    """The noise sigma in model units, and where it came from (given, or estimated from the image)."""
    if run.options.noise is not None:
        return float(run.options.noise), "given"
    if run.variance is not None:
        return run.variance.floor_sd, f"Poisson-Gaussian model per value ({run.noise_model_source}); noise: its floor"
    sigma = estimate_noise(run.planes, run.operator)
    if not sigma >= MIN_NOISE:
        raise InvalidInputError(
            f"the measurement's noise level was estimated as {sigma:.3g} (a noise-free or quantised image): give noise="
        )
    return sigma, "estimated from the measurement (finest Haar diagonal detail, MAD; napari_treg.imaging.noise)"


def prior_sd_of(prior: DiffusionPrior, options: EnsembleSettings, channels: int) -> tuple[float, str]:
    """The prior's sd per pixel (model units): given, the model's own, or :data:`DEFAULT_PRIOR_SD`.

    The analytic prior's own ``latent_std`` is per colour channel, the channels independent; a grey
    image is the mean of the three, so its sd is ``latent_std / sqrt(3)``.
    """
    if options.prior_sd is not None:
        return float(options.prior_sd), "given"
    own = getattr(prior, "latent_std", None)
    if isinstance(own, (int, float)) and own > 0:
        return float(own) / (math.sqrt(3.0) if channels == 1 else 1.0), "the model's own (latent_std)"
    return DEFAULT_PRIOR_SD, "default"


# -- running the samples ----------------------------------------------------------------------------


def calibrated(
    restorer: Restorer,
    noise: float,
    prior_sd: float,
    variance: NoiseVariance | None = None,
    check: Callable[[], None] | None = None,
    exchange: PlaneExchange | None = None,
) -> Restorer:
    """``restorer``'s ensemble variant: its samples end with the noise-aware data step, and use the data once.

    - No final projection (``final_dc``): it would pull every sample onto the data before the
      noise-aware step, which is itself the last data step.
    - Data steps over at most the first :data:`~napari_treg.engine.calibration.ENSEMBLE_DC_UNTIL` of the
      steps: the later ones would survive into the sample, and the noise-aware step count the data again.
    - With data-first re-noising, whose data-consistent estimate enters at full weight, each data
      step weighs the data by the measurement's noise (``cg_lambda = noise^2 / prior_sd^2``, as
      the noise-aware step) instead of fitting them exactly: the exact fits carry the measurement
      noise into every sample's mean. On the analytic prior (benchmarks/calibration.py, blur
      sigma 1.5) the data-first ensemble's mean error is 0.58 posterior sd and its coverage 83 %
      with both, 0.31 sd and 86 % without them (docs/uncertainty.md).

    ``restore``'s single images are not changed by this (``restorer`` itself is not changed). A
    ``cg_lambda`` or ``dc_until`` given explicitly and replaced: a warning says so, and ``info["replaced"]``.
    With photon noise (``variance``), ``noise`` is the floor's sd, and the last step perturbs and
    weighs each value by its own variance. ``check()`` is called in every CG iteration of the last
    step (a cancel raises from it). ``exchange``: the samples of a volume trade planes (solver/exchange.py).
    """
    given = restorer.config
    config = sample_settings(given, noise, prior_sd)
    for name, why in (
        ("dc_until", f"the samples take data steps over at most {ENSEMBLE_DC_UNTIL:g} of the steps"),
        ("cg_lambda", "(noise / prior_sd)^2, schedule data-first"),
    ):
        explicit = getattr(given, name) != getattr(TRegSettings, name)
        if explicit and getattr(config, name) != getattr(given, name):
            warnings.warn(
                f"the ensemble's data steps use {name} = {getattr(config, name):.3g} in place of the {name} "
                f"{getattr(given, name):g} given ({why}; info['replaced'] records it)",
                UserWarning,
                stacklevel=2,
            )
    finish = functools.partial(
        noise_aware_step, noise=noise, prior_sd=prior_sd, device=restorer.prior.device, variance=variance, check=check
    )
    return restorer.variant(config, finish, exchange)


def sample_settings(config: TRegSettings, noise: float, prior_sd: float) -> TRegSettings:
    """The method settings an ensemble's samples run with (:func:`calibrated` says why): no final
    projection, data steps over at most the first ``ENSEMBLE_DC_UNTIL`` of the steps, and with
    data-first re-noising ``cg_lambda = noise^2 / prior_sd^2``."""
    config = replace(config, final_dc=False, dc_until=min(config.dc_until, ENSEMBLE_DC_UNTIL))
    if config.data_first:
        config = replace(config, cg_lambda=proximal_weight(noise, prior_sd))
    return config


def replaced_settings(restorer: Restorer, calibrated_restorer: Restorer) -> dict:
    """The method settings the ensemble ran with in place of the restorer's: ``{name: {"given", "used"}}``."""
    given, used = restorer.config.as_dict(), calibrated_restorer.config.as_dict()
    return {name: {"given": given[name], "used": used[name]} for name in given if given[name] != used[name]}


def text_free(restorer: Restorer) -> Restorer | None:
    """The same restorer without text (no prompt, no guidance, no negation); None if it has no text to remove."""
    if not restorer.prompt.strip() or restorer.config.guidance == 0:
        return None
    config = replace(restorer.config, guidance=0.0, adaptive_negation=False)
    return Restorer(restorer.prior, config, method=restorer.method, prompt="", negative_prompt="")


def noise_aware_step(
    x: torch.Tensor,
    y: torch.Tensor,
    operator: LinearOperator,
    seeds: list[int],
    *,
    noise: float,
    prior_sd: float,
    device,
    variance: NoiseVariance | None = None,
    check: Callable[[], None] | None = None,
) -> torch.Tensor:
    """The engine's finish hook: perturb-and-MAP on a batch; plane ``k`` draws its noise from ``seeds[k]``."""
    perturbation = np.stack(
        [np.random.default_rng([seed, NOISE_STREAM]).standard_normal(y.shape[1:]) for seed in seeds]
    )
    e = torch.from_numpy(perturbation.astype(np.float32)).to(device)
    return perturb_and_map(
        operator, y.to(device), x.to(device), noise, prior_sd, e, variance=variance, check=check
    ).cpu()


def replicate(run: Run, first: int, count: int, samples: int) -> Run:
    """Samples ``first .. first + count - 1`` of ``samples`` as one run of ``count * planes`` planes.

    Unit ``j`` of sample ``k``, plane ``i`` (``j = (k - first) * planes + i``) gets seed ``seed + k * planes + i``;
    tiled, the units of tile ``t`` come after those of the tiles before, and get ``seed + t * samples * planes
    + k * planes + i``: the same seeds however the samples are split into calls (``keep_samples``, ``batch_size``).
    """
    planes = len(run.measured)
    base, per_tile = run.options.seed + first * planes, count * planes

    def seed_of(unit: int) -> int:
        tile, index = divmod(unit, per_tile)
        return base + tile * samples * planes + index

    options = replace(run.options, seed=base)
    return replace(run, measured=np.tile(run.measured, (count, 1, 1, 1)), options=options, seed_of=seed_of)


def exchanges_planes(run: Run, options: EnsembleSettings, method: str) -> bool:
    """Whether the ensemble's samples trade planes (:mod:`napari_treg.solver.exchange`): a volume solve
    (``run.depth``) untiled, with one Gaussian noise level, by TReg, and ``plane_exchange`` set."""
    plain_volume = run.depth is not None and run.plan is None and run.variance is None
    return options.plane_exchange and plain_volume and method == "treg"


def exchange_groups(samples: int) -> list[int]:
    """Sizes of the groups of samples that trade planes together: balanced, at most ``MAX_GROUP`` each."""
    count = math.ceil(samples / MAX_GROUP)
    return [samples // count + (1 if k < samples % count else 0) for k in range(count)]


def sample_chunks(
    options: EnsembleSettings, batch_size: int, run: Run, exchange: bool = False
) -> list[tuple[int, int]]:
    """``(first, count)`` of the samples solved in one call: a batch's worth of samples, or one sample at a
    time when tiled (the tiles of one sample are batched), so memory stays that of one tiled restore; with a
    plane ``exchange``, each group of samples that trade (:func:`exchange_groups`)."""
    if exchange:
        sizes = exchange_groups(options.samples)
        return [(sum(sizes[:k]), size) for k, size in enumerate(sizes)]
    planes = len(run.measured)
    per_call = 1 if run.plan is not None else max(1, batch_size // planes)
    return [(first, min(per_call, options.samples - first)) for first in range(0, options.samples, per_call)]


def chunk_runs(run: Run, chunks: list[tuple[int, int]]) -> list[Run]:
    """Stand-ins of the runs of each chunk of samples, for counting (their planes hold no values)."""
    planes = len(run.measured)
    return [replace(run, measured=np.empty((count * planes, 0, 0, 0))) for _, count in chunks]


def pass_steps(restorer: Restorer, run: Run, chunks: list[tuple[int, int]], batch_size: int) -> int:
    """Sampler steps of one pass over the samples (one batched model call each for TReg)."""
    total = 0
    for part in chunk_runs(run, chunks):
        per_call = restorer.planes_per_call(part, batch_size)
        total += restorer.config.steps * sum(math.ceil(s / per_call) for s in part.unit_sizes())
    return total


def pass_model_calls(restorer: Restorer, run: Run, chunks: list[tuple[int, int]], batch_size: int) -> int:
    """Model calls of one pass: each sampler step's (a volume's chunks of ``batch_size`` planes), and each
    plane exchange's look-aheads."""
    if restorer.method not in MODEL_METHODS:
        return 0
    total = 0
    for part, (_, count) in zip(chunk_runs(run, chunks), chunks):
        per_call = restorer.planes_per_call(part, batch_size)
        sampler_calls = sum(math.ceil(s / per_call) for s in part.unit_sizes())
        steps = restorer.config.steps
        if restorer.exchange is not None and count > 1:
            steps += len(restorer.exchange.trade_steps(steps)) * LOOK_AHEAD_STEPS
        total += steps * sampler_calls * restorer.calls_per_step(part, batch_size)
    return total


class StepOffset:
    """Turns each call's :class:`Progress` into progress over the whole ensemble."""

    def __init__(self, callback: ProgressCallback | None, total: int):
        self.callback = callback
        self.total = total
        self.done = 0

    def for_call(self) -> ProgressCallback | None:
        if self.callback is None:
            return None
        offset, callback = self.done, self.callback
        return lambda event: callback(replace(event, step=offset + event.step, total=self.total))


def run_pass(
    restorer: Restorer,
    *,
    run: Run,
    chunks: list[tuple[int, int]],
    batch_size: int,
    relay: StepOffset,
    samples: int,
    keep: bool,
    is_cancelled,
    conflicts: ConflictLog | None = None,
) -> tuple[Moments | None, np.ndarray | None]:
    """All samples of one restorer: their streamed moments, or (``keep``) the samples ``(n, N, C, H, W)``
    written into one array (the statistics then come from it: :func:`statistics`).

    ``conflicts`` collects every sample's text-conflict evidence (no extra model call).
    """
    moments = None if keep else Moments()
    kept = None
    for first, count in chunks:
        part = replicate(run, first, count, samples)
        per_call = restorer.planes_per_call(part, batch_size)
        reporter = Reporter(part, per_call, restorer.config.steps, relay.for_call(), is_cancelled, restorer.preview)
        planes = restorer.solve_run(part, batch_size, reporter, conflicts)
        raise_if(is_cancelled)
        check_finite(planes, "an ensemble sample")
        stack = planes.reshape(count, len(run.measured), *planes.shape[1:])
        if moments is not None:
            moments.add(stack)
        else:
            if kept is None:
                kept = np.empty((samples, *stack.shape[1:]), dtype=np.float32)
            kept[first : first + count] = stack
        relay.done += reporter.total
    return moments, kept


def statistics(moments: Moments | None, kept: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (float64): from the kept samples (one sample at a time, no copy of
    them all), or the streamed moments."""
    if kept is not None:
        mean = kept.mean(axis=0, dtype=np.float64)
        m2 = np.zeros_like(mean)
        for sample in kept:
            deviation = sample.astype(np.float64) - mean
            deviation *= deviation
            m2 += deviation
        return mean, np.sqrt(m2 / (len(kept) - 1))
    assert moments is not None and moments.mean is not None
    return moments.mean, moments.std()


def share_progress(callback: ProgressCallback | None) -> Callable[[int, int], SolveProgress | None]:
    """``(map, maps) -> progress(done, solves)``: the data share's probe solves of map ``map`` of ``maps``
    (one per plane with photon noise) as :class:`Progress` events of phase :data:`DATA_SHARE`."""

    def for_map(index: int, maps: int) -> SolveProgress | None:
        if callback is None:
            return None
        return lambda done, solves: callback(Progress(done, solves, index, maps, phase=DATA_SHARE))

    return for_map


def data_share_planes(
    prior: DiffusionPrior,
    run: Run,
    noise: float,
    prior_sd: float,
    mean: np.ndarray | None = None,
    check: Callable[[], None] | None = None,
    progress: Callable[[int, int], SolveProgress | None] = share_progress(None),
) -> np.ndarray:
    """The data share of every plane ``(N, C, H, W)`` (float32; one operator, so the same for all planes,
    unless it couples them: then one map of the whole volume).

    With photon noise each plane (or the volume) has its own: the weights are taken at its ``mean`` (input units).
    ``check()`` runs in every CG iteration of the probes (a cancel raises from it); ``progress``: see
    :func:`share_progress`.
    """
    volume = () if run.depth is None else (run.depth,)
    image_shape = (*volume, run.layout.channels, *run.operator.image_hw(run.layout.hw))
    measurement_shape = (*volume, run.layout.channels, *run.layout.hw)
    variance = run.variance
    if variance is not None and mean is not None:
        estimates = torch.from_numpy(run.scale.to_model(mean))
        weights = variance.weights(run.operator.forward(estimates))
        shapes = (image_shape, measurement_shape)
        if volume:
            return share_map(prior, run, noise, prior_sd, *shapes, weights, check, progress(1, 1)).astype(np.float32)
        maps = [
            share_map(prior, run, noise, prior_sd, *shapes, w, check, progress(k + 1, len(weights)))
            for k, w in enumerate(weights)
        ]
        return np.stack(maps).astype(np.float32)
    share = share_map(prior, run, noise, prior_sd, image_shape, measurement_shape, check=check, progress=progress(1, 1))
    return np.broadcast_to(share, (len(run.measured), *image_shape[-3:])).astype(np.float32)


def share_map(
    prior: DiffusionPrior,
    run: Run,
    noise: float,
    prior_sd: float,
    image_shape: tuple[int, ...],
    measurement_shape: tuple[int, ...],
    weights: torch.Tensor | None = None,
    check: Callable[[], None] | None = None,
    progress: SolveProgress | None = None,
) -> np.ndarray:
    """One data-share map (the probes seeded with :data:`PROBE_SEED`), checked finite."""
    generator = torch.Generator().manual_seed(PROBE_SEED)
    share = data_share(
        run.operator,
        measurement_shape,
        image_shape,
        noise,
        prior_sd,
        generator=generator,
        device=prior.device,
        weights=weights,
        check=check,
        progress=progress,
    )
    check_finite(share, "the data share")
    return share.cpu().numpy()


#: the name before issue 29 (one suffix for the settings classes), kept for one release
EnsembleOptions = EnsembleSettings

__all__ = ["Ensemble", "EnsembleOptions", "EnsembleSettings", "ensemble_prepared", "restorer_ensemble"]
