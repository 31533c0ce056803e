"""Ensembles: many restorations of one measurement, and what they say about each pixel.

:func:`ensemble` restores a measurement ``samples`` times (sample ``k``, plane ``i`` with seed
``seed + k * planes + i``, as planes of one batch where memory allows) over the engine's
:class:`~napari_treg.engine.restorer.Restorer`, and returns an :class:`Ensemble`:

- ``mean`` and ``std`` over the samples (streamed, Welford/Chan, when the samples are not kept);
- ``data_share``: ``1 - posterior variance / prior variance`` per pixel, from the data step's
  linear system (:func:`napari_treg.solver.posterior.data_share`): 1 = measured, 0 = not seen;
- ``text_influence``: ``|mean with the prompt - mean without text|`` over the same seeds;
- ``interval(level)`` and ``info`` (seeds, noise and where it came from, settings, model calls,
  and ``text_conflict``: the text-conflict check of :mod:`napari_treg.solver.conflict` on every sample).

The samples are calibrated, not just a loop over seeds: each one's last step is the noise-aware
data step of :mod:`napari_treg.solver.posterior` (perturb-and-MAP with the measurement's noise
sigma, given or estimated by :func:`napari_treg.imaging.noise.estimate_noise`). docs/uncertainty.md has
what the maps mean and the calibration on the exact analytic prior (benchmarks/calibration.py).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from napari_treg.engine import holdout
from napari_treg.engine.restorer import (
    MAX_SEED,
    ProgressCallback,
    Reporter,
    Restorer,
    Run,
    RunOptions,
    prepare,
    residual_map,
    run_options_from,
)
from napari_treg.errors import CancelSignal, InvalidInputError, cancel_checker, raise_if
from napari_treg.imaging import layout as imaging
from napari_treg.imaging.noise import estimate_noise
from napari_treg.memory import available_host_bytes, guard_memory
from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import LinearOperator
from napari_treg.settings import check_number, setting, validate
from napari_treg.solver.conflict import ConflictLog, unchecked
from napari_treg.solver.divergence import check_finite
from napari_treg.solver.noise_weights import NoiseVariance
from napari_treg.solver.posterior import DATA_SHARE_PROBES, data_share, perturb_and_map, proximal_weight

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


@dataclass(frozen=True)
class EnsembleOptions:
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
    info: dict
    residual: np.ndarray | None = None  # |A mean - y| per measured value (as Restoration.residual)
    uncorrected_std: np.ndarray | None = None  # with the held-out check: the std before its correction

    def interval(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)``: the predictive interval ``mean +- t sqrt(1 + 1/n) std`` holding ``level`` of the values.

        ``t`` is Student's quantile with ``n - 1`` degrees of freedom (``n`` samples): for 32 samples
        and 0.9 the half-width is 1.72 std.
        """
        from scipy.stats import t

        level = check_number(level, "level", minimum=0.0, maximum=1.0)
        if not 0.0 < level < 1.0:
            raise InvalidInputError(f"level must be between 0 and 1 (exclusive), got {level!r}")
        count = int(self.info["samples"])
        half = float(t.ppf((1.0 + level) / 2.0, count - 1)) * math.sqrt(1.0 + 1.0 / count) * self.std
        return self.mean - half, self.mean + half

    def restoration_info(self) -> dict:
        """The mean's info as a single restore's (its text-conflict check on top), the ensemble's own under
        ``"ensemble"``: what the widget and the batch runner record for an ensemble's result."""
        own = {key: value for key, value in self.info.items() if key != "settings"}
        return {**self.info["settings"], "text_conflict": self.info["text_conflict"], "ensemble": own}


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
    options: EnsembleOptions | None = None,
    run_options: RunOptions | None = None,
    intensity_range: tuple[float, float] | None = None,
    callback: ProgressCallback | None = None,
    cancel: CancelSignal = None,
    **run_values: Any,
) -> Ensemble:
    """:func:`ensemble` for front ends that already hold a :class:`Restorer` (its model, settings and text).

    ``run_options``: a ready :class:`~napari_treg.engine.restorer.RunOptions`, or its fields as keywords
    (``seed``, ``noise``, ``batch_size``, ...). The restorer itself is not changed.
    """
    started = time.perf_counter()
    options = options if options is not None else EnsembleOptions()
    run = prepare(image, operator, run_options_from(run_options, run_values), intensity_range)
    return ensemble_prepared(restorer, run, options, callback, cancel, started)


def ensemble_prepared(
    restorer: Restorer,
    run: Run,
    options: EnsembleOptions,
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
    batch_size = restorer.batch_size(replicate(run, 0, options.samples))
    chunks = sample_chunks(options, batch_size, len(run.measured))
    main = calibrated(restorer, noise, prior_sd, run.variance)
    free = text_free(restorer)
    passes = [main] if free is None else [main, calibrated(free, noise, prior_sd, run.variance)]
    check = (
        None
        if options.holdout is None
        else holdout.HoldoutCheck.plan(run, options.holdout, noise, prior_sd, options.samples)
    )
    extra = 0 if check is None else pass_steps(main, run, chunks, batch_size)  # the check's own pass
    relay = StepOffset(callback, extra + sum(pass_steps(r, run, chunks, batch_size) for r in passes))
    work = functools.partial(run_pass, run=run, chunks=chunks, batch_size=batch_size, relay=relay)
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
        free_mean = free_moments.mean
    raise_if(is_cancelled)
    mean, std = statistics(moments, kept)
    share_sd = prior_sd if check is None else check.factor * prior_sd
    share = data_share_planes(restorer.prior, run, noise, share_sd, mean)
    if corrections is not None:
        mean, kept, free_mean = corrected(corrections, mean, kept, free_mean)
    seconds = time.perf_counter() - started
    info = {
        **sampling_info(run, options, noise_source, prior_sd_source),
        "noise": noise,
        "prior_sd": prior_sd,
        "text_influence": free is not None,
        "text_conflict": text_conflict(restorer, conflicts, options.samples),
        "model_calls": relay.total * restorer.calls_per_step(run, batch_size)
        if restorer.method in MODEL_METHODS
        else 0,
        "seconds": seconds,
        "seconds_per_sample": seconds / options.samples,
        "settings": restorer.provenance(run, batch_size, mean, seconds),
    }
    if run.noise_model is not None:
        info["noise_model"] = run.noise_model_info()
    if check is not None:
        info["holdout"] = check.summary
    layout = run.layout
    return Ensemble(
        mean=imaging.from_planes(mean.astype(np.float32), layout),
        std=imaging.from_planes(std.astype(np.float32), layout),
        samples=None if kept is None else np.stack([imaging.from_planes(s, layout) for s in kept]),
        data_share=imaging.from_planes(share, layout),
        text_influence=None if free_mean is None else imaging.from_planes(influence(mean, free_mean), layout),
        info=info,
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


def sampling_info(run: Run, options: EnsembleOptions, noise_source: str, prior_sd_source: str) -> dict:
    """How the samples were drawn: seeds, the rule behind them, and where the noise and prior sd came from."""
    return {
        "samples": options.samples,
        "keep_samples": options.keep_samples,
        "seeds": [run.options.seed + k * len(run.measured) for k in range(options.samples)],
        "seed_rule": "sample k of plane i: seed + k * planes + i; its last step's noise: "
        f"numpy.random.default_rng([that seed, {NOISE_STREAM}])",
        "noise_source": noise_source,
        "prior_sd_source": prior_sd_source,
        "last_step": "perturb-and-MAP (napari_treg.solver.posterior), in place of the final projection; "
        "with data-first re-noising the data steps use cg_lambda = noise^2 / prior_sd^2 (uncertainty.calibrated)",
        "data_share_probes": DATA_SHARE_PROBES,
    }


def text_conflict(restorer: Restorer, conflicts: ConflictLog | None, samples: int) -> dict:
    """``info["text_conflict"]``: as a single restore's, over the planes/tiles of every sample of the prompted pass.

    Each sample's evidence comes from its own first data-consistency steps, so the result does
    not depend on how the samples were batched (``batch_size``, ``keep_samples``).
    """
    if conflicts is None:
        return unchecked(restorer.unchecked_reason())
    return {**conflicts.summary(), "samples": samples}


def influence(with_text: np.ndarray, without_text: np.ndarray) -> np.ndarray:
    """``|mean with the prompt - mean without text|`` (float32)."""
    return np.abs(with_text - without_text).astype(np.float32)


# -- checks and settings --------------------------------------------------------------------------


def check_ensemble(run: Run, options: EnsembleOptions) -> tuple[float, str]:
    """Refuse, before any work, an ensemble whose seeds overflow, whose noise is not positive or cannot be
    estimated, or whose kept samples do not fit in memory; returns the noise sigma and where it came from."""
    planes = len(run.measured)
    if run.options.seed + options.samples * planes - 1 > MAX_SEED:
        raise InvalidInputError(f"seed + samples * planes must stay below {MAX_SEED + 1}: use a smaller seed")
    if run.options.noise is not None and run.options.noise <= 0:
        raise InvalidInputError(
            f"noise must be > 0 for an ensemble (the measurement's noise sigma in model units), got {run.options.noise}"
        )
    noise = measurement_noise(run)
    if options.holdout is not None:
        if run.noise_model is not None:
            raise InvalidInputError(
                "the held-out check does not weigh values by the Poisson-Gaussian model yet: "
                "use holdout with one Gaussian noise level, or no holdout"
            )
        holdout.hidden_map(run, options.holdout)  # refuses a run with too few values to hold out
    if not options.keep_samples:
        return noise
    hw = run.operator.image_hw(run.layout.hw)
    needed = 2 * options.samples * planes * run.layout.channels * hw[0] * hw[1] * 4  # samples, and their copy
    available = available_host_bytes()
    if available is not None and needed > HOST_MEMORY_SHARE * available:
        raise InvalidInputError(
            f"keeping {options.samples} samples of {planes} plane(s) of {hw[0]}x{hw[1]} needs "
            f"{needed / 2**30:.1f} GiB, "
            f"more than {HOST_MEMORY_SHARE:.0%} of the available memory ({available / 2**30:.1f} GiB): "
            "use keep_samples=False (mean and std are then streamed) or fewer samples"
        )
    return noise


def measurement_noise(run: Run) -> tuple[float, str]:
    """The noise sigma in model units, and where it came from (given, or estimated from the image)."""
    if run.options.noise is not None:
        return float(run.options.noise), "given"
    if run.variance is not None:
        return run.variance.floor_sd, f"Poisson-Gaussian model per value ({run.noise_model_source}); noise: its floor"
    sigma = estimate_noise(run.planes, run.operator)
    if not sigma > 0:
        raise InvalidInputError(
            "the measurement's noise level was estimated as 0 (a noise-free or quantised image): give noise="
        )
    return sigma, "estimated from the measurement (finest Haar diagonal detail, MAD; napari_treg.imaging.noise)"


def prior_sd_of(prior: DiffusionPrior, options: EnsembleOptions, channels: int) -> tuple[float, str]:
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


def calibrated(restorer: Restorer, noise: float, prior_sd: float, variance: NoiseVariance | None = None) -> Restorer:
    """``restorer``'s ensemble variant: its samples end with the noise-aware data step, and use the data once.

    - No final projection (``final_dc``): it would pull every sample onto the data before the
      noise-aware step, which is itself the last data step.
    - With data-first re-noising, whose data-consistent estimate enters at full weight, each data
      step weighs the data by the measurement's noise (``cg_lambda = noise^2 / prior_sd^2``, as
      the noise-aware step) instead of fitting them exactly: the exact fits carry the measurement
      noise into every sample's mean. On the analytic prior (benchmarks/calibration.py, blur
      sigma 1.5) the data-first ensemble's mean error is 0.58 posterior sd and its coverage 83 %
      with both, 0.31 sd and 86 % without them (docs/uncertainty.md).

    ``restore``'s single images are not changed by this (``restorer`` itself is not changed).
    With photon noise (``variance``), ``noise`` is the floor's sd, and the last step perturbs and
    weighs each value by its own variance.
    """
    config = replace(restorer.config, final_dc=False)
    if config.data_first:
        config = replace(config, cg_lambda=proximal_weight(noise, prior_sd))
    finish = functools.partial(
        noise_aware_step, noise=noise, prior_sd=prior_sd, device=restorer.prior.device, variance=variance
    )
    return restorer.variant(config, finish)


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
    seed: int,
    *,
    noise: float,
    prior_sd: float,
    device,
    variance: NoiseVariance | None = None,
) -> torch.Tensor:
    """The engine's finish hook: perturb-and-MAP on a batch; plane ``k`` draws its noise from seed ``seed + k``."""
    perturbation = np.stack(
        [np.random.default_rng([seed + k, NOISE_STREAM]).standard_normal(y.shape[1:]) for k in range(len(y))]
    )
    e = torch.from_numpy(perturbation.astype(np.float32)).to(device)
    if variance is None:
        return perturb_and_map(operator, y.to(device), x.to(device), noise, prior_sd, e).cpu()
    return perturb_and_map(operator, y.to(device), x.to(device), noise, prior_sd, e, variance=variance).cpu()


def replicate(run: Run, first: int, count: int) -> Run:
    """Samples ``first .. first + count - 1`` of a run as one run of ``count * planes`` planes."""
    planes = len(run.measured)
    options = replace(run.options, seed=run.options.seed + first * planes)
    return replace(run, measured=np.tile(run.measured, (count, 1, 1, 1)), options=options)


def sample_chunks(options: EnsembleOptions, batch_size: int, planes: int) -> list[tuple[int, int]]:
    """``(first, count)`` of the samples solved in one call: all when kept, else a batch's worth."""
    per_call = options.samples if options.keep_samples else max(1, batch_size // planes)
    return [(first, min(per_call, options.samples - first)) for first in range(0, options.samples, per_call)]


def pass_steps(restorer: Restorer, run: Run, chunks: list[tuple[int, int]], batch_size: int) -> int:
    """Sampler steps of one pass over the samples (one batched model call each for TReg)."""
    planes = len(run.measured)
    replicated = (replace(run, measured=np.empty((count * planes, 0, 0, 0))) for _, count in chunks)
    per_call = restorer.planes_per_call(run, batch_size)
    return sum(restorer.config.steps * sum(math.ceil(s / per_call) for s in r.unit_sizes()) for r in replicated)


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
    keep: bool,
    is_cancelled,
    conflicts: ConflictLog | None = None,
) -> tuple[Moments, np.ndarray | None]:
    """All samples of one restorer: their moments, and the samples ``(n, N, C, H, W)`` when kept.

    ``conflicts`` collects every sample's text-conflict evidence (no extra model call).
    """
    moments = Moments()
    kept = []
    for first, count in chunks:
        part = replicate(run, first, count)
        per_call = restorer.planes_per_call(run, batch_size)
        reporter = Reporter(part, per_call, restorer.config.steps, relay.for_call(), is_cancelled, restorer.preview)
        planes = restorer.solve_run(part, batch_size, reporter, conflicts)
        raise_if(is_cancelled)
        check_finite(planes, "an ensemble sample")
        stack = planes.reshape(count, len(run.measured), *planes.shape[1:])
        moments.add(stack)
        if keep:
            kept.append(stack)
        relay.done += reporter.total
    return moments, (np.concatenate(kept) if keep else None)


def statistics(moments: Moments, kept: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation: from the kept samples, or the streamed moments."""
    if kept is not None:
        return kept.mean(axis=0, dtype=np.float64), kept.std(axis=0, ddof=1, dtype=np.float64)
    assert moments.mean is not None
    return moments.mean, moments.std()


def data_share_planes(
    prior: DiffusionPrior, run: Run, noise: float, prior_sd: float, mean: np.ndarray | None = None
) -> np.ndarray:
    """The data share of every plane ``(N, C, H, W)`` (float32; one operator, so the same for all planes,
    unless it couples them: then one map of the whole volume).

    With photon noise each plane (or the volume) has its own: the weights are taken at its ``mean`` (input units).
    """
    volume = () if run.depth is None else (run.depth,)
    image_shape = (*volume, run.layout.channels, *run.operator.image_hw(run.layout.hw))
    measurement_shape = (*volume, run.layout.channels, *run.layout.hw)
    variance = run.variance
    if variance is not None and mean is not None:
        estimates = torch.from_numpy(run.scale.to_model(mean))
        weights = variance.weights(run.operator.forward(estimates))
        if volume:
            return share_map(prior, run, noise, prior_sd, image_shape, measurement_shape, weights).astype(np.float32)
        maps = [share_map(prior, run, noise, prior_sd, image_shape, measurement_shape, w) for w in weights]
        return np.stack(maps).astype(np.float32)
    share = share_map(prior, run, noise, prior_sd, image_shape, measurement_shape)
    return np.broadcast_to(share, (len(run.measured), *image_shape[-3:])).astype(np.float32)


def share_map(
    prior: DiffusionPrior,
    run: Run,
    noise: float,
    prior_sd: float,
    image_shape: tuple[int, ...],
    measurement_shape: tuple[int, ...],
    weights: torch.Tensor | None = None,
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
    )
    check_finite(share, "the data share")
    return share.cpu().numpy()


__all__ = ["Ensemble", "EnsembleOptions", "ensemble_prepared", "restorer_ensemble"]
