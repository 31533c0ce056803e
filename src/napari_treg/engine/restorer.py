"""The engine: one object that restores images with a prior and the method's settings.

Every front end (``restore``, the CLI, the widget, the batch runner) builds a
:class:`Restorer` once and calls :meth:`Restorer.restore`; the tiler sits on top of
:meth:`Restorer.solve_planes`. Validation, planning, seeding, batching, residuals and
provenance happen here and nowhere else. One restore, top to bottom:

1. check the inputs and settings (:class:`RunSettings`, :func:`prepare`);
2. map the image to model units (one intensity scale for the whole image);
3. solve the planes in batches (plane ``k`` with ``seed + k``), or in tiles;
4. map back, check the result is finite, and record the provenance.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from napari_treg.engine import tiling
from napari_treg.engine.run_info import NoiseModelInfo, Parameters, RunInfo, package_versions
from napari_treg.engine.volume import check_volume, volume_depth, volume_info
from napari_treg.errors import CancelSignal, InvalidInputError, cancel_checker, raise_if
from napari_treg.imaging import layout as imaging
from napari_treg.imaging.metrics import residual_summary, residual_sums, weighted_residual
from napari_treg.imaging.noise import (
    NoiseDefaults,
    PoissonGaussian,
    check_above_offset,
    estimate_noise,
    fit_variance_line,
)
from napari_treg.memory import auto_batch_size, free_bytes, guard_memory
from napari_treg.models.base import DiffusionPrior
from napari_treg.models.chunked import PlaneChunks
from napari_treg.operators import LinearOperator
from napari_treg.settings import check_text, from_values, optional_like, setting, validate
from napari_treg.solver import TRegSettings, get_method
from napari_treg.solver.conflict import ConflictLog, TextConflict
from napari_treg.solver.divergence import check_finite
from napari_treg.solver.exchange import PlaneExchange
from napari_treg.solver.noise_weights import NoiseVariance
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config

#: ``hook(first, count, state)`` after every sampler step of planes ``first .. first + count - 1``
StepHook = Callable[[int, int, dict], None]
#: ``finish(x, y, operator, seeds)``: a last step on a batch's samples, one seed each (model units; ensemble.py)
FinishHook = Callable[[torch.Tensor, torch.Tensor, LinearOperator, list[int]], torch.Tensor]
#: ``place(preview, unit)``: a unit's preview placed in the whole image (tiled runs)
PlacePreview = Callable[[np.ndarray, int], "np.ndarray | None"]


#: the largest seed: plane ``k`` of a stack uses ``seed + k``, and torch takes seeds below 2**64
MAX_SEED = 2**63 - 1
#: the noise models a run can use: one Gaussian level (the default), or photon noise
NOISE_MODELS = ("gaussian", "poisson-gaussian")
#: the Poisson-Gaussian model's parameters, as run options
PHOTON_PARAMETERS = ("gain", "read_sd", "offset")


@dataclass(frozen=True)
class RunSettings:
    """How one image is run (not the method): seeds, batches, tiles, noise, previews."""

    seed: int = setting(0, "seed of the sampler; plane k of a stack uses seed + k", minimum=0, maximum=MAX_SEED)
    batch_size: int | str = setting(
        "auto",
        "planes of a stack solved together; auto: as many as fit on a CUDA GPU (at most 4), else 1",
        minimum=1,
        maximum=64,
        auto=True,
    )
    tile_size: int | None = setting(
        None,
        "restore images larger than this (restored pixels; 512 suits SD 1.5) in overlapping, "
        "seam-free tiles; None: in one piece",
        minimum=tiling.MIN_TILE,
        maximum=16384,
    )
    tile_overlap: int = setting(64, "overlap of neighbouring tiles, in restored pixels", minimum=0, maximum=4096)
    noise: float | None = setting(
        None,
        "the measurement's noise sigma in model units (as for degrade); the residual is then also "
        "reported in units of it (about 1 = consistent with the measurement)",
        minimum=0.0,
        maximum=1e6,
    )
    preview_every: int = setting(
        0, "a preview of the current estimate every this many steps (0: none)", minimum=0, maximum=100_000
    )
    rgb: bool | None = setting(None, "whether the last axis is colour (None: a last axis of 3 or 4)")
    noise_model: str = setting(
        "gaussian",
        "gaussian: one noise level for every value; poisson-gaussian: photon noise, var = gain (I - offset) "
        "+ read_sd^2 in the input's units, every data step weighing each value by 1 / var (gain and read_sd "
        "estimated from the image when not given)",
        choices=NOISE_MODELS,
        label="noise model",
    )
    gain: float | None = optional_like(
        PoissonGaussian, "gain", "poisson-gaussian: the intensity of one photon in the input's units (ADU per photon)"
    )
    read_sd: float | None = optional_like(
        PoissonGaussian, "read_sd", "poisson-gaussian: the read-noise standard deviation in the input's units"
    )
    offset: float | None = optional_like(
        PoissonGaussian, "offset", "poisson-gaussian: the input's value at zero photons (default 0, or estimated)"
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.tile_size is not None and self.tile_overlap >= self.tile_size:
            raise InvalidInputError(
                f"tile_overlap must be smaller than tile_size ({self.tile_size}), got {self.tile_overlap}"
            )
        check_noise_model_options(self)

    def photon_noise(self) -> PoissonGaussian | None:
        """The Poisson-Gaussian model given in full (gain and read_sd), else None."""
        if self.noise_model != "poisson-gaussian" or self.gain is None or self.read_sd is None:
            return None
        return PoissonGaussian(self.gain, self.read_sd, 0.0 if self.offset is None else self.offset)


def check_noise_model_options(options: RunSettings) -> None:
    """Refuse photon-noise parameters without that model, a Gaussian level beside it, or half a model."""
    given = [name for name in PHOTON_PARAMETERS if getattr(options, name) is not None]
    if options.noise_model == "gaussian":
        if given:
            raise InvalidInputError(
                f"{', '.join(given)} describe the Poisson-Gaussian noise model: give noise_model='poisson-gaussian' too"
            )
        return
    if options.noise is not None:
        raise InvalidInputError(
            "give noise (one Gaussian level) or noise_model='poisson-gaussian', not both: the model gives every "
            "value its own level"
        )
    if (options.gain is None) != (options.read_sd is None):
        raise InvalidInputError(
            "give both gain and read_sd of the Poisson-Gaussian model, or neither (then both are estimated "
            "from the image)"
        )
    options.photon_noise()  # checks the model's own ranges


def noise_model_values(noise_model: Any) -> dict[str, Any]:
    """``noise_model`` of the API (None, a name, or a :class:`PoissonGaussian`) as run-option values."""
    if noise_model is None:
        return {}
    if isinstance(noise_model, PoissonGaussian):
        return {"noise_model": "poisson-gaussian", **noise_model.as_dict()}
    if isinstance(noise_model, str):
        return {"noise_model": noise_model}
    raise InvalidInputError(
        "noise_model must be 'gaussian', 'poisson-gaussian' (estimated from the image) or a "
        f"napari_treg.noise.PoissonGaussian, got {type(noise_model).__name__}"
    )


def run_options_from(options: RunSettings | None, values: dict[str, Any]) -> RunSettings:
    """``options`` if given (then ``values`` must be empty), else the :class:`RunSettings` of ``values``."""
    if options is None:
        return from_values(RunSettings, values, "run option")
    if not isinstance(options, RunSettings):
        raise InvalidInputError(f"options must be a RunSettings, got {type(options).__name__}")
    if values:
        raise InvalidInputError(f"give options or {', '.join(values)}, not both")
    return options


#: the phases of :class:`Progress`: the sampler's steps, and an ensemble's data share (its probe solves)
SAMPLING, DATA_SHARE = "sampling", "data share"


@dataclass(frozen=True)
class Progress:
    """One progress event: after step ``step`` of ``total`` (all planes and tiles together).

    ``plane`` of ``planes`` and ``tile`` of ``tiles`` count from 1; ``preview`` is the current
    estimate (shaped like one output plane, or the whole blended image when tiled), or None.
    ``phase``: :data:`SAMPLING`, or an ensemble's :data:`DATA_SHARE` (then ``step`` of ``total``
    counts the probe solves of the data share, anew from 1).
    """

    step: int
    total: int
    plane: int
    planes: int
    tile: int = 1
    tiles: int = 1
    preview: np.ndarray | None = None
    phase: str = SAMPLING


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class Restoration:
    """A restored image and its provenance: ``run_info`` (a :class:`~napari_treg.engine.run_info.RunInfo`:
    parameters, model, versions, residual, time, checks) and ``info``, its plain JSON.

    Unpacks as ``image, info``; ``residual`` is ``|A x - y|`` per measured value in the input's units,
    shaped like the measurement (0 where nothing is measured): the map the engine's ``residual`` sums.
    """

    image: np.ndarray
    run_info: RunInfo
    residual: np.ndarray | None = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def info(self) -> dict[str, Any]:
        """``run_info`` as plain JSON (serialised once: the same dict on every access)."""
        return self.run_info.as_dict()

    def __iter__(self):
        return iter((self.image, self.info))


# -- one validated run --------------------------------------------------------------------------


@dataclass
class Run:
    """One image, checked and mapped to model units, with how it will be solved."""

    operator: LinearOperator
    layout: imaging.Layout
    measured: np.ndarray  # (N, C, h, w), input units (float32)
    scale: imaging.IntensityScale
    options: RunSettings
    plan: tiling.Tiling | None
    noise_model: PoissonGaussian | None = None  # photon noise (input units), given or estimated
    noise_model_source: str = ""

    @property
    def variance(self) -> NoiseVariance | None:
        """The photon noise in model units (None: one Gaussian level)."""
        if self.noise_model is None:
            return None
        return self.noise_model.in_model_units(self.scale.low, self.scale.high)

    def noise_model_info(self) -> NoiseModelInfo:
        """``info["noise_model"]``: the model in the input's units and in model units, and where it came from."""
        assert self.noise_model is not None and self.variance is not None
        return NoiseModelInfo(self.noise_model, self.variance, self.noise_model_source)

    #: the seed of unit ``k`` (plane, or tile-major tile and plane); None: ``options.seed + k``
    seed_of: Callable[[int], int] | None = None

    def unit_seed(self, unit: int) -> int:
        """The seed of unit ``unit`` of this run's solve calls."""
        return self.options.seed + unit if self.seed_of is None else self.seed_of(unit)

    @property
    def planes(self) -> np.ndarray:
        """The measurement in model units ``(N, C, h, w)``."""
        return self.scale.to_model(self.measured)

    def to_output(self, x: torch.Tensor) -> np.ndarray:
        """Restored planes in model units -> input intensity units (float32)."""
        return self.scale.from_model(x.numpy())

    @property
    def depth(self) -> int | None:
        """Planes of one volume when the operator couples planes (a 3-D PSF), else None."""
        return volume_depth(self.operator, self.layout)

    def unit_sizes(self) -> list[int]:
        """Planes of each solve call: all planes, or per tiling call."""
        if self.plan is None:
            return [len(self.measured)]
        return tiling.call_sizes(self.operator, len(self.measured), self.plan)


def prepare(
    image: Any,
    operator: LinearOperator,
    options: RunSettings,
    intensity_range: Any = None,
    noise_defaults: NoiseDefaults | None = None,
) -> Run:
    """Check an image and operator once for every path (tiled or not), and plan the run.

    ``noise_defaults``: camera values recorded with the image, the defaults of a Poisson-Gaussian model
    asked for without its parameters (:func:`photon_noise_of`)."""
    if not isinstance(operator, LinearOperator):
        raise InvalidInputError(
            f"operator must be one of napari_treg.operators (e.g. SuperResolution(4)), got {operator!r}"
        )
    array = guard_memory(lambda: imaging.check_image(image))  # host memory: a huge image becomes OutOfMemoryError
    layout = imaging.layout_of(array, options.rgb)
    image_hw = operator.image_hw(layout.hw)
    if min(image_hw) < 8:
        raise InvalidInputError(f"the restored image would be {image_hw[0]}x{image_hw[1]}; at least 8x8 is needed")
    operator.check_image_hw(image_hw)
    if operator.couples_planes:
        check_volume(layout, operator, options.tile_size, options.tile_overlap)
    measured = guard_memory(lambda: imaging.to_planes(array, layout))
    scale = guard_memory(lambda: imaging.intensity_scale(measured, intensity_range))
    plan = None
    if options.tile_size is not None and max(image_hw) > options.tile_size:
        plan = tiling.Tiling.plan(operator, layout.hw, options.tile_size, options.tile_overlap)
    noise_model, source = photon_noise_of(options, measured, operator, noise_defaults)
    return Run(operator, layout, measured, scale, options, plan, noise_model, source)


def photon_noise_of(
    options: RunSettings, measured: np.ndarray, operator: LinearOperator, defaults: NoiseDefaults | None = None
) -> tuple[PoissonGaussian | None, str]:
    """The run's Poisson-Gaussian model and its source; the measurement must be mostly at or above its offset.

    What is given wins; then what ``defaults`` record (the offset, and the gain: read_sd is then fitted
    with that gain); the rest is estimated from the measurement (only gain and read_sd^2 - gain offset are
    identifiable; offset 0 when neither given nor recorded, or where the fitted line meets zero variance).
    """
    if options.noise_model != "poisson-gaussian":
        return None, ""
    recorded = defaults if defaults is not None else NoiseDefaults()
    offset, offset_recorded = options.offset, False
    if offset is None and recorded.offset is not None:
        offset, offset_recorded = recorded.offset, True
    if options.gain is not None and options.read_sd is not None:
        model = PoissonGaussian(options.gain, options.read_sd, 0.0 if offset is None else offset)
        source = "given" + (f" (offset from {recorded.describe()})" if offset_recorded else "")
    else:
        gain = recorded.gain
        fit = fit_variance_line(measured, operator, gain)
        model = fit.model(offset)
        where = "offset given" if options.offset is not None else "offset 0 or where the fitted line meets 0"
        if offset_recorded:
            where = "offset recorded"
        fitted = (
            f"var = {fit.slope:.4g} I + {fit.intercept:.4g} over {fit.bins} intensity bins of {fit.blocks} 2x2 blocks"
        )
        method = "finest Haar diagonal detail; napari_treg.noise.estimate_poisson_gaussian"
        if gain is None and not offset_recorded:
            source = (
                f"estimated from the measurement ({fitted}, finest Haar diagonal detail; {where}; "
                "napari_treg.noise.estimate_poisson_gaussian)"
            )
        elif gain is None:
            source = (
                f"{recorded.describe()} (offset); gain and read_sd estimated from the measurement ({fitted}, {method})"
            )
        else:
            source = (
                f"{recorded.describe()} (gain{', offset' if offset_recorded else ''}); read_sd estimated from the "
                f"measurement with that gain ({fitted}, {method}; {where})" + gain_check(measured, operator, gain)
            )
    check_above_offset(measured, model.offset, "the measurement")
    return model, source


#: a recorded gain this many times off the measurement's own fit (either way) is named as doubtful
GAIN_DOUBT = 2.0


def gain_check(measured: np.ndarray, operator: LinearOperator | None, gain: float) -> str:
    """A warning for the source when the measurement's own fit puts the gain more than :data:`GAIN_DOUBT`
    times off a recorded one (a file's "gain" is often an amplifier setting, not ADU per photon); else ""."""
    try:
        own = fit_variance_line(measured, operator).slope
    except InvalidInputError:
        return ""
    if 1.0 / GAIN_DOUBT <= own / gain <= GAIN_DOUBT:
        return ""
    return (
        f"; DOUBTFUL: the measurement's own fit gives gain {own:.3g}, not the recorded {gain:g} (is the recorded "
        "gain ADU per photon? give gain and read_sd otherwise)"
    )


# -- the engine ---------------------------------------------------------------------------------


class Restorer:
    """A prior, the method's settings and the text, ready to restore images (see :meth:`restore`)."""

    def __init__(
        self,
        prior: DiffusionPrior,
        config: TRegSettings | None = None,
        *,
        method: str = "treg",
        prompt: str | None = "",
        negative_prompt: str | None = "",
        finish: FinishHook | None = None,
        embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        exchange: PlaneExchange | None = None,
    ):
        if not isinstance(prior, DiffusionPrior):
            raise InvalidInputError(f"prior must be a DiffusionPrior (see load_model), got {type(prior).__name__}")
        self.prior = prior
        self.config = config if config is not None else method_config(DEFAULT_SCHEDULE, {})
        self.method = method
        self.sampler = get_method(method)
        self.prompt = check_text(prompt, "prompt")
        self.negative_prompt = check_text(negative_prompt, "negative_prompt")
        if embeddings is None:
            embeddings = (prior.embed_text([self.prompt]), prior.embed_text([self.negative_prompt]))
        self.text, self.null = embeddings
        self._finish = finish  # the last step of every batch's samples (an ensemble's variant), or None
        #: the plane exchange of an ensemble's volume samples solved together (solver/exchange.py), or None
        self.exchange = exchange

    def variant(
        self, config: TRegSettings, finish: FinishHook | None = None, exchange: PlaneExchange | None = None
    ) -> Restorer:
        """This restorer with another config, last step and plane exchange (an ensemble's): the same prior,
        method and text, and the same text embeddings (nothing is embedded again). This restorer is not changed."""
        return Restorer(
            self.prior,
            config,
            method=self.method,
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            finish=finish,
            embeddings=(self.text, self.null),
            exchange=exchange,
        )

    def restore(
        self,
        image: Any,
        operator: LinearOperator,
        *,
        options: RunSettings | None = None,
        intensity_range: tuple[float, float] | None = None,
        callback: ProgressCallback | None = None,
        cancel: CancelSignal = None,
        noise_defaults: NoiseDefaults | None = None,
        **run_values: Any,
    ) -> Restoration:
        """Restore ``image`` (a measurement ``y = A x + n`` by ``operator``); see :func:`napari_treg.restore`.

        ``options``: a ready :class:`RunSettings` (built and checked by a front end), or its fields
        as keywords (``seed``, ``rgb``, ``batch_size``, ``tile_size``, ``tile_overlap``, ``noise``,
        ``preview_every``); ``noise_defaults``: see :func:`prepare`. Returns a :class:`Restoration` ``(image, info)``.

        Raises
        ------
        InvalidInputError
            The image, the operator or a run option cannot be used (the message names it).
        OutOfMemoryError
            The device ran out of memory (its memory is released first).
        DivergenceError
            The sampler produced NaN or inf values.
        Cancelled
            ``cancel`` was set; nothing is returned.

        Examples
        --------
        >>> import numpy as np
        >>> from napari_treg.models import load_model
        >>> from napari_treg.operators import GaussianBlur
        >>> restorer = Restorer(load_model("analytic"), method_config("data-first", {"steps": 4}))
        >>> measurement = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
        >>> image, info = restorer.restore(measurement, GaussianBlur(sigma=1.0), seed=7)
        >>> image.shape, info["seed"]
        ((3, 16, 16), 7)
        """
        started = time.perf_counter()
        options = run_options_from(options, run_values)
        run = prepare(image, operator, options, intensity_range, noise_defaults)
        return self.restore_prepared(run, callback, cancel, started)

    def restore_prepared(
        self,
        run: Run,
        callback: ProgressCallback | None = None,
        cancel: CancelSignal = None,
        started: float | None = None,
    ) -> Restoration:
        """Solve a :class:`Run` made by :func:`prepare`; the result is checked finite."""
        started = time.perf_counter() if started is None else started
        self.check_noise_model(run)
        is_cancelled = cancel_checker(cancel)
        raise_if(is_cancelled)
        batch_size = self.batch_size(run)
        reporter = Reporter(
            run, self.planes_per_call(run, batch_size), self.config.steps, callback, is_cancelled, self.preview
        )
        conflicts = self.conflict_log(run)
        restored = guard_memory(lambda: self.solve_run(run, batch_size, reporter, conflicts))
        raise_if(is_cancelled)  # cancelled during the last step: still nothing is returned
        return self.finished(run, batch_size, restored, conflicts, started)

    def finished(
        self, run: Run, batch_size: int, restored: np.ndarray, conflicts: ConflictLog | None, started: float
    ) -> Restoration:
        """The restored planes checked finite, shaped like the input, with their provenance."""
        check_finite(restored, "the restored image")
        image = imaging.from_planes(restored, run.layout)
        seconds = time.perf_counter() - started
        conflict = conflicts.conflict() if conflicts is not None else TextConflict(reason=self.unchecked_reason())
        run_info = self.provenance(run, batch_size, restored, seconds, conflict)
        return Restoration(image, run_info, residual_map(run, restored))

    # -- a tiled run one tile at a time (batch units, engine/tiling.py) ---------------------

    def solve_tile(self, run: Run, index: int) -> TilePiece:
        """Tile ``index`` (row-major) of a tiled run, solved on its own exactly as :meth:`restore_prepared`
        solves it among the others: the same planes, seeds (units ``index * N ..``) and batches.

        Only for operators that serve every tile (:func:`~napari_treg.engine.tiling.is_size_agnostic`):
        their tiles are independent solves. :meth:`assemble_tiles` blends the pieces.
        """
        plan = checked_tile_plan(run)
        if not 0 <= index < plan.count:
            raise InvalidInputError(f"tile {index} does not exist: the run has {plan.count} tiles")
        batch_size = self.batch_size(run)
        reporter = Reporter(
            run, self.planes_per_call(run, batch_size), self.config.steps, None, lambda: False, self.preview
        )
        conflicts = self.conflict_log(run)
        rows, cols = plan.slices()[index]
        solve = self.unit_solver(run, batch_size, reporter, conflicts)
        restored = guard_memory(lambda: solve(run.planes[:, :, rows, cols], run.operator, index * len(run.measured)))
        return TilePiece(index, restored, conflicts)

    def assemble_tiles(self, run: Run, pieces: list[TilePiece], started: float | None = None) -> Restoration:
        """The restoration of a tiled run from all its tiles' pieces (:meth:`solve_tile`), blended as
        :meth:`restore_prepared` blends them: the same image, bit for bit, and the same provenance."""
        started = time.perf_counter() if started is None else started
        plan = checked_tile_plan(run)
        by_index = {piece.index: piece for piece in pieces}
        if sorted(by_index) != list(range(plan.count)):
            raise InvalidInputError(f"the run has {plan.count} tiles; got the pieces {sorted(by_index)}")
        canvas = tiling.Canvas(plan, run.layout, len(run.measured))
        for index in range(plan.count):
            canvas.add(by_index[index].planes, index * len(run.measured))
        conflicts = merged_conflicts([by_index[index].conflicts for index in range(plan.count)])
        return self.finished(run, self.batch_size(run), canvas.result(), conflicts, started)

    def check_noise_model(self, run: Run) -> None:
        """Refuse photon noise for a method whose data steps do not weigh values (all but TReg)."""
        if run.noise_model is not None and self.method != "treg":
            raise InvalidInputError(
                f"the Poisson-Gaussian noise model is used by method 'treg' only, not {self.method!r}: "
                "use noise_model='gaussian' with this method"
            )

    # -- the text-conflict check (solver/conflict.py) ---------------------------------------

    def unchecked_reason(self) -> str:
        if self.method != "treg":
            return f"method {self.method!r} is not checked"
        return "no prompt" if not self.prompt else "guidance 0: the prompt is not used"

    def conflict_log(self, run: Run, noise: tuple[float, str] | None = None) -> ConflictLog | None:
        """Where the prompt is used, a log for its conflict evidence, with the noise level given or estimated.

        ``noise``: the level and where it came from, when the caller already has them (an ensemble's).
        """
        if self.method != "treg" or not self.prompt or self.config.guidance == 0:
            return None
        if noise is not None:
            return ConflictLog(*noise, run.variance)
        if run.variance is not None:
            return ConflictLog(run.variance.floor_sd, "Poisson-Gaussian model, weighted per value", run.variance)
        if run.options.noise:
            return ConflictLog(run.options.noise, "given")
        try:
            sigma = estimate_noise(run.planes, run.operator)
        except InvalidInputError as error:
            return ConflictLog(None, f"not estimated: {error}")
        return ConflictLog(sigma if sigma > 0 else None, "estimated from the measurement (an upper bound on texture)")

    # -- solving ----------------------------------------------------------------------------

    def solve_run(
        self, run: Run, batch_size: int, reporter: Reporter, conflicts: ConflictLog | None = None
    ) -> np.ndarray:
        """All planes of a run, whole or in tiles; restored planes ``(N, C, H, W)`` in input units."""
        solve = self.unit_solver(run, batch_size, reporter, conflicts)
        if run.plan is None:
            return solve(run.planes, run.operator, 0)
        return tiling.solve_in_tiles(solve, run.planes, run.operator, run.plan, run.layout)

    def unit_solver(
        self, run: Run, batch_size: int, reporter: Reporter, conflicts: ConflictLog | None
    ) -> Callable[..., np.ndarray]:
        """``solve(units, operator, offset, place=None)``: a run's measurement units numbered ``offset ..`` solved
        with their seeds, restored planes in input units (:data:`~napari_treg.engine.tiling.Solve`)."""

        def solve(units: np.ndarray, operator: LinearOperator, offset: int, place: PlacePreview | None = None):
            hook = functools.partial(reporter.after_step, offset=offset, place=place)
            return self.solve_planes(
                units,
                operator,
                seeds=[run.unit_seed(offset + k) for k in range(len(units))],
                batch_size=batch_size,
                to_output=run.to_output,
                hook=hook,
                conflicts=conflicts,
                variance=run.variance,
                depth=run.depth,
            )

        return solve

    def solve_planes(
        self,
        planes: np.ndarray,
        operator: LinearOperator,
        *,
        seeds: list[int],
        batch_size: int,
        to_output: Callable[[torch.Tensor], np.ndarray],
        hook: StepHook | None = None,
        conflicts: ConflictLog | None = None,
        variance: NoiseVariance | None = None,
        depth: int | None = None,
    ) -> np.ndarray:
        """Solve measurement planes ``(N, C, h, w)`` (model units) in batches; plane ``k`` uses ``seeds[k]``.

        Returns ``to_output`` of the restored planes ``(N, C, H, W)``; ``conflicts`` collects the
        text-conflict evidence of every batch; ``variance``: photon noise (None: one Gaussian level).
        ``depth``: the planes are volumes of ``depth``
        consecutive planes (an operator that couples planes), each solved as one batch whose
        model calls take ``batch_size`` planes at a time (engine/volume.py); with a plane exchange all the
        volumes of the call are one batch, each measured alone, and trade planes (solver/exchange.py).
        """
        group, prior, exchange_depth = batch_size, self.prior, None
        if depth is not None:
            group = depth
            if self.exchange is not None:
                group, exchange_depth, operator = len(planes), depth, operator.stacked(depth)
            prior = PlaneChunks(self.prior, batch_size, group)
        results = []
        for first in range(0, len(planes), group):
            y = torch.from_numpy(np.ascontiguousarray(planes[first : first + group]))
            callback = None if hook is None else functools.partial(hook, first, len(y))
            batch_seeds = seeds[first : first + len(y)]
            batch = self.solve_batch(y, operator, batch_seeds, callback, conflicts, variance, prior, exchange_depth)
            results.append(to_output(batch))
        return np.concatenate(results)

    def solve_batch(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        seeds: list[int],
        callback: Callable[[dict], None] | None,
        conflicts: ConflictLog | None = None,
        variance: NoiseVariance | None = None,
        prior: DiffusionPrior | None = None,
        exchange_depth: int | None = None,
    ) -> torch.Tensor:
        """One batch ``(B, C, h, w)``, plane ``k`` with ``seeds[k]``: pad to the model's size multiple, sample,
        crop back (model units).

        ``prior``: the model as the sampler calls it (a volume's :class:`PlaneChunks`); default the restorer's.
        ``exchange_depth``: the batch is volumes of that many planes (samples of one measurement) that trade
        planes by the restorer's :attr:`exchange`.
        """
        measurement_hw = (int(y.shape[-2]), int(y.shape[-1]))
        image_hw = operator.image_hw(measurement_hw)
        pad_h, pad_w = imaging.pad_amounts(operator, measurement_hw, self.prior.size_multiple)
        y_model = imaging.mirror_pad(imaging.to_rgb(y), pad_h, pad_w)
        padded_hw = operator.image_hw((measurement_hw[0] + pad_h, measurement_hw[1] + pad_w))
        padded = operator.padded(padded_hw[0] - image_hw[0], padded_hw[1] - image_hw[1])
        batch = y.shape[0]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        check = None if conflicts is None else conflicts.check(self.prior, padded, y_model)
        prior = self.prior if prior is None else prior
        extra: dict[str, Any] = {} if variance is None else {"variance": variance}
        if exchange_depth is not None and self.exchange is not None:
            one_volume = imaging.mirror_pad(y[:exchange_depth], pad_h, pad_w).to(self.prior.device)
            extra["exchange"] = self.exchange.bind(
                prior, padded, one_volume, exchange_depth, seeds[0], self.config.steps
            )
        x = self.sampler(
            prior,
            y_model,
            padded,
            padded_hw,
            text=self.text.expand(batch, -1, -1),
            null=self.null.expand(batch, -1, -1),
            config=self.config,
            generators=generators,
            callback=both(callback, check),
            **extra,
        )
        if conflicts is not None:
            conflicts.add(check)
        x = imaging.from_rgb(x[..., : image_hw[0], : image_hw[1]].detach().cpu(), y.shape[1])
        return x if self._finish is None else self._finish(x, y, operator, seeds)

    def preview(self, z0: torch.Tensor, run: Run, hw: tuple[int, int]) -> np.ndarray:
        """The estimate ``z0`` of one plane, decoded and shaped like one output plane (input units)."""
        with torch.no_grad():
            x = self.prior.decode(z0).float().cpu()
        x = imaging.from_rgb(x[..., : hw[0], : hw[1]], run.layout.channels)
        plane = run.to_output(x)[0]
        return np.moveaxis(plane, 0, -1) if run.layout.rgb else plane[0]

    def planes_per_call(self, run: Run, batch_size: int) -> int:
        """Planes the sampler holds at once: a batch; a whole volume when the operator couples planes; all the
        run's volumes (an ensemble's samples) with a plane exchange."""
        if run.depth is None:
            return batch_size
        return len(run.measured) if self.exchange is not None else run.depth

    def calls_per_step(self, run: Run, batch_size: int) -> int:
        """Model calls of one sampler step: 1, or the chunks of ``batch_size`` planes of what the sampler holds."""
        return 1 if run.depth is None else math.ceil(self.planes_per_call(run, batch_size) / batch_size)

    def batch_size(self, run: Run) -> int:
        """The run's batch size as a number: ``"auto"`` asks the device how many planes fit."""
        if isinstance(run.options.batch_size, int):
            return run.options.batch_size
        if run.plan is None:
            hw = run.operator.image_hw(run.layout.hw)
            planes = len(run.measured)
        else:
            hw = (run.plan.tile_hw[0] * run.plan.scale, run.plan.tile_hw[1] * run.plan.scale)
            planes = max(run.unit_sizes())
        return auto_batch_size(planes, hw, self.prior.dtype, free_bytes(self.prior.device))

    # -- provenance -------------------------------------------------------------------------

    def provenance(
        self,
        run: Run,
        batch_size: int,
        restored: np.ndarray,
        seconds: float,
        text_conflict: TextConflict | None = None,
    ) -> RunInfo:
        """The run's record: every parameter needed to replay it, the model, versions, residual, time, the
        text-conflict check (None: an ensemble's mean, whose check is the ensemble's)."""
        options = run.options
        x = torch.from_numpy(run.scale.to_model(restored))
        y = torch.from_numpy(run.planes)
        intensity_range = (run.scale.low, run.scale.high)
        params = Parameters(
            operator=repr(run.operator),
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            method=self.method,
            options=options,
            rgb=run.layout.rgb,
            batch_size=batch_size,
            intensity_range=intensity_range,
            config=self.config,
        )
        residual = residual_summary(residual_sums(run.operator, x, y), options.noise)
        if run.variance is not None:
            residual["residual_over_noise"] = weighted_residual(run.operator, x, y, run.variance)
        cut = None
        if run.plan is not None and options.tile_size is not None:
            cut = run.plan.describe(options.tile_size, options.tile_overlap, len(run.unit_sizes()))
        return RunInfo(
            params=params,
            model=self.prior.name,
            test_model=self.prior.is_test_model,
            device=str(self.prior.device),
            dtype=str(self.prior.dtype).replace("torch.", ""),
            seed=options.seed,
            residual=residual["residual"],
            noise=residual["noise"],
            residual_over_noise=residual["residual_over_noise"],
            intensity_range=intensity_range,
            seconds=seconds,
            versions=package_versions(),
            noise_model=None if run.variance is None else run.noise_model_info(),
            tiling=cut,
            volume=volume_info(run.operator, run.layout, batch_size),
            text_conflict=text_conflict,
        )


@dataclass
class TilePiece:
    """One tile of a tiled run, solved alone (:meth:`Restorer.solve_tile`): its restored planes
    ``(N, C, h', w')`` in input units and its text-conflict evidence (None where unchecked)."""

    index: int
    planes: np.ndarray
    conflicts: ConflictLog | None


def checked_tile_plan(run: Run) -> tiling.Tiling:
    """The run's tiling, refusing a run in one piece and operators cut per tile (masks)."""
    if run.plan is None:
        raise InvalidInputError("the run is not tiled (no tile_size, or the image fits one tile)")
    if not tiling.is_size_agnostic(run.operator):
        raise InvalidInputError(f"{run.operator!r} is cut per tile: its tiles are not solved one at a time")
    return run.plan


def merged_conflicts(logs: list[ConflictLog | None]) -> ConflictLog | None:
    """One run's text-conflict log from its tiles' logs, in tile order (as one run collects them)."""
    if not logs or logs[0] is None:
        return None
    merged = ConflictLog(logs[0].noise, logs[0].noise_source, logs[0].variance)
    for log in logs:
        assert log is not None
        merged.deficits.extend(log.deficits)
        merged.unchecked_units += log.unchecked_units
        for reason in log.reasons:
            merged.note(reason)
    return merged


def residual_map(run: Run, restored: np.ndarray) -> np.ndarray:
    """``|A x - y|`` of restored planes (input units) per measured value, shaped like the measurement."""
    x = torch.from_numpy(run.scale.to_model(restored)).double()
    difference = run.operator.forward(x) - run.operator.measured(torch.from_numpy(run.planes).double())
    slope = (run.scale.high - run.scale.low) / 2.0  # from model units to the input's
    return imaging.from_planes((difference.abs() * slope).numpy().astype(np.float32), run.layout)


class Reporter:
    """Turns sampler steps into :class:`Progress` events; checks cancel after every step."""

    def __init__(
        self,
        run: Run,
        batch_size: int,
        steps: int,
        callback: ProgressCallback | None,
        is_cancelled: Callable[[], bool],
        render: Callable[[torch.Tensor, Run, tuple[int, int]], np.ndarray],
    ):
        self.run = run
        self.callback = callback
        self.is_cancelled = is_cancelled
        self.render = render
        self.done = 0
        self.total = steps * sum(math.ceil(size / batch_size) for size in run.unit_sizes())
        self.planes = len(run.measured)
        self.tiles = 1 if run.plan is None else run.plan.count

    def after_step(
        self, first: int, count: int, state: dict, *, offset: int = 0, place: PlacePreview | None = None
    ) -> None:
        """Called by the sampler after each step of planes ``offset + first ..``; may raise Cancelled."""
        raise_if(self.is_cancelled)
        self.done += 1
        if self.callback is None:
            return
        unit = offset + first
        tile, plane = divmod(unit, self.planes)
        every = self.run.options.preview_every
        preview = None
        if every and (state["i"] + 1) % every == 0:
            preview = self.preview(state["z0"][:1], unit, place)
        self.callback(Progress(self.done, self.total, plane + 1, self.planes, tile + 1, self.tiles, preview))

    def preview(self, z0: torch.Tensor, unit: int, place: PlacePreview | None) -> np.ndarray | None:
        run = self.run
        if run.plan is None:
            return self.render(z0, run, run.operator.image_hw(run.layout.hw))
        hw = (run.plan.tile_hw[0] * run.plan.scale, run.plan.tile_hw[1] * run.plan.scale)
        tile = self.render(z0, run, hw)
        return tile if place is None else place(tile, unit)


def both(first: Callable[[dict], None] | None, second: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    """One sampler callback calling ``second`` then ``first`` (either may be None)."""
    if first is None or second is None:
        return first or second

    def call(state: dict) -> None:
        second(state)
        first(state)

    return call


#: the name before issue 29 (one suffix for the settings classes), kept for one release
RunOptions = RunSettings
