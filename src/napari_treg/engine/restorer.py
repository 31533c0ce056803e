"""The engine: one object that restores images with a prior and the method's settings.

Every front end (``restore``, the CLI, the widget, the batch runner) builds a
:class:`Restorer` once and calls :meth:`Restorer.restore`; the tiler sits on top of
:meth:`Restorer.solve_planes`. Validation, planning, seeding, batching, residuals and
provenance happen here and nowhere else. One restore, top to bottom:

1. check the inputs and settings (:class:`RunOptions`, :func:`prepare`);
2. map the image to model units (one intensity scale for the whole image);
3. solve the planes in batches (plane ``k`` with ``seed + k``), or in tiles;
4. map back, check the result is finite, and record the provenance.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from napari_treg.engine import tiling
from napari_treg.engine.run_info import package_versions
from napari_treg.errors import CancelSignal, InvalidInputError, cancel_checker, raise_if
from napari_treg.imaging import layout as imaging
from napari_treg.imaging.metrics import residual_summary, residual_sums
from napari_treg.imaging.noise import estimate_noise
from napari_treg.memory import auto_batch_size, free_bytes, guard_memory
from napari_treg.models.base import DiffusionPrior
from napari_treg.operators import LinearOperator
from napari_treg.settings import check_text, from_values, setting, validate
from napari_treg.solver import TRegConfig, get_method
from napari_treg.solver.conflict import ConflictLog, unchecked
from napari_treg.solver.divergence import check_finite
from napari_treg.solver.schedules import DEFAULT_SCHEDULE, method_config

#: ``hook(first, count, state)`` after every sampler step of planes ``first .. first + count - 1``
StepHook = Callable[[int, int, dict], None]
#: ``finish(x, y, operator, seeds)``: a last step on a batch's samples, one seed each (model units; ensemble.py)
FinishHook = Callable[[torch.Tensor, torch.Tensor, LinearOperator, list[int]], torch.Tensor]
#: ``place(preview, unit)``: a unit's preview placed in the whole image (tiled runs)
PlacePreview = Callable[[np.ndarray, int], "np.ndarray | None"]


#: the largest seed: plane ``k`` of a stack uses ``seed + k``, and torch takes seeds below 2**64
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class RunOptions:
    """How one image is run (not the method): seeds, batches, tiles, noise, previews."""

    seed: int = setting(0, "seed of the sampler; plane k of a stack uses seed + k", minimum=0, maximum=MAX_SEED)
    batch_size: Any = setting(
        "auto",
        "planes of a stack solved together; auto: as many as fit on a CUDA GPU (at most 4), else 1",
        kind=int,
        minimum=1,
        maximum=64,
        auto=True,
    )
    tile_size: Any = setting(
        None,
        "restore images larger than this (restored pixels; 512 suits SD 1.5) in overlapping, "
        "seam-free tiles; None: in one piece",
        kind=int,
        minimum=tiling.MIN_TILE,
        maximum=16384,
        optional=True,
    )
    tile_overlap: int = setting(64, "overlap of neighbouring tiles, in restored pixels", minimum=0, maximum=4096)
    noise: Any = setting(
        None,
        "the measurement's noise sigma in model units (as for degrade); the residual is then also "
        "reported in units of it (about 1 = consistent with the measurement)",
        kind=float,
        minimum=0.0,
        maximum=1e6,
        optional=True,
    )
    preview_every: int = setting(
        0, "a preview of the current estimate every this many steps (0: none)", minimum=0, maximum=100_000
    )
    rgb: Any = setting(None, "whether the last axis is colour (None: a last axis of 3 or 4)", kind=bool, optional=True)

    def __post_init__(self) -> None:
        validate(self)
        if self.tile_size is not None and self.tile_overlap >= self.tile_size:
            raise InvalidInputError(
                f"tile_overlap must be smaller than tile_size ({self.tile_size}), got {self.tile_overlap}"
            )


def run_options_from(options: RunOptions | None, values: dict[str, Any]) -> RunOptions:
    """``options`` if given (then ``values`` must be empty), else the :class:`RunOptions` of ``values``."""
    if options is None:
        return from_values(RunOptions, values, "run option")
    if not isinstance(options, RunOptions):
        raise InvalidInputError(f"options must be a RunOptions, got {type(options).__name__}")
    if values:
        raise InvalidInputError(f"give options or {', '.join(values)}, not both")
    return options


@dataclass(frozen=True)
class Progress:
    """One progress event: after step ``step`` of ``total`` (all planes and tiles together).

    ``plane`` of ``planes`` and ``tile`` of ``tiles`` count from 1; ``preview`` is the current
    estimate (shaped like one output plane, or the whole blended image when tiled), or None.
    """

    step: int
    total: int
    plane: int
    planes: int
    tile: int = 1
    tiles: int = 1
    preview: np.ndarray | None = None


ProgressCallback = Callable[[Progress], None]


class Restoration(NamedTuple):
    """A restored image and its provenance (plain JSON: parameters, model, versions, residual, time)."""

    image: np.ndarray
    info: dict


# -- one validated run --------------------------------------------------------------------------


@dataclass
class Run:
    """One image, checked and mapped to model units, with how it will be solved."""

    operator: LinearOperator
    layout: imaging.Layout
    measured: np.ndarray  # (N, C, h, w), input units (float32)
    scale: imaging.IntensityScale
    options: RunOptions
    plan: tiling.Tiling | None
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

    def unit_sizes(self) -> list[int]:
        """Planes of each solve call: all planes, or per tiling call."""
        if self.plan is None:
            return [len(self.measured)]
        return tiling.call_sizes(self.operator, len(self.measured), self.plan)


def prepare(image: Any, operator: LinearOperator, options: RunOptions, intensity_range: Any = None) -> Run:
    """Check an image and operator once for every path (tiled or not), and plan the run."""
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
    measured = guard_memory(lambda: imaging.to_planes(array, layout))
    scale = guard_memory(lambda: imaging.intensity_scale(measured, intensity_range))
    plan = None
    if options.tile_size is not None and max(image_hw) > options.tile_size:
        plan = tiling.Tiling.plan(operator, layout.hw, options.tile_size, options.tile_overlap)
    return Run(operator, layout, measured, scale, options, plan)


# -- the engine ---------------------------------------------------------------------------------


class Restorer:
    """A prior, the method's settings and the text, ready to restore images (see :meth:`restore`)."""

    def __init__(
        self,
        prior: DiffusionPrior,
        config: TRegConfig | None = None,
        *,
        method: str = "treg",
        prompt: str | None = "",
        negative_prompt: str | None = "",
    ):
        if not isinstance(prior, DiffusionPrior):
            raise InvalidInputError(f"prior must be a DiffusionPrior (see load_model), got {type(prior).__name__}")
        self.prior = prior
        self.config = config if config is not None else method_config(DEFAULT_SCHEDULE, {})
        self.method = method
        self.sampler = get_method(method)
        self.prompt = check_text(prompt, "prompt")
        self.negative_prompt = check_text(negative_prompt, "negative_prompt")
        self.text = prior.embed_text([self.prompt])
        self.null = prior.embed_text([self.negative_prompt])
        self.finish: FinishHook | None = None  # applied to every batch's samples (ensembles)

    def restore(
        self,
        image: Any,
        operator: LinearOperator,
        *,
        options: RunOptions | None = None,
        intensity_range: tuple[float, float] | None = None,
        callback: ProgressCallback | None = None,
        cancel: CancelSignal = None,
        **run_values: Any,
    ) -> Restoration:
        """Restore ``image`` (a measurement ``y = A x + n`` by ``operator``); see :func:`napari_treg.restore`.

        ``options``: a ready :class:`RunOptions` (built and checked by a front end), or its fields
        as keywords (``seed``, ``rgb``, ``batch_size``, ``tile_size``, ``tile_overlap``, ``noise``,
        ``preview_every``). Returns a :class:`Restoration` ``(image, info)``.

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
        run = prepare(image, operator, options, intensity_range)
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
        is_cancelled = cancel_checker(cancel)
        raise_if(is_cancelled)
        batch_size = self.batch_size(run)
        reporter = Reporter(run, batch_size, self.config.steps, callback, is_cancelled, self.preview)
        conflicts = self.conflict_log(run)
        restored = guard_memory(lambda: self.solve_run(run, batch_size, reporter, conflicts))
        raise_if(is_cancelled)  # cancelled during the last step: still nothing is returned
        check_finite(restored, "the restored image")
        image = imaging.from_planes(restored, run.layout)
        info = self.provenance(run, batch_size, restored, time.perf_counter() - started)
        info["text_conflict"] = conflicts.summary() if conflicts is not None else unchecked(self.unchecked_reason())
        return Restoration(image, info)

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
            return ConflictLog(*noise)
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
        planes = run.planes

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
            )

        if run.plan is None:
            return solve(planes, run.operator, 0)
        return tiling.solve_in_tiles(solve, planes, run.operator, run.plan, run.layout)

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
    ) -> np.ndarray:
        """Solve measurement planes ``(N, C, h, w)`` (model units) in batches; plane ``k`` uses ``seeds[k]``.

        Returns ``to_output`` of the restored planes ``(N, C, H, W)``; ``conflicts`` collects the
        text-conflict evidence of every batch.
        """
        results = []
        for first in range(0, len(planes), batch_size):
            y = torch.from_numpy(np.ascontiguousarray(planes[first : first + batch_size]))
            callback = None if hook is None else functools.partial(hook, first, len(y))
            batch_seeds = seeds[first : first + len(y)]
            results.append(to_output(self.solve_batch(y, operator, batch_seeds, callback, conflicts)))
        return np.concatenate(results)

    def solve_batch(
        self,
        y: torch.Tensor,
        operator: LinearOperator,
        seeds: list[int],
        callback: Callable[[dict], None] | None,
        conflicts: ConflictLog | None = None,
    ) -> torch.Tensor:
        """One batch ``(B, C, h, w)``, plane ``k`` with ``seeds[k]``: pad to the model's size multiple, sample,
        crop back (model units)."""
        measurement_hw = (int(y.shape[-2]), int(y.shape[-1]))
        image_hw = operator.image_hw(measurement_hw)
        pad_h, pad_w = imaging.pad_amounts(operator, measurement_hw, self.prior.size_multiple)
        y_model = imaging.mirror_pad(imaging.to_rgb(y), pad_h, pad_w)
        padded_hw = operator.image_hw((measurement_hw[0] + pad_h, measurement_hw[1] + pad_w))
        padded = operator.padded(padded_hw[0] - image_hw[0], padded_hw[1] - image_hw[1])
        batch = y.shape[0]
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        check = None if conflicts is None else conflicts.check(self.prior, padded, y_model)
        x = self.sampler(
            self.prior,
            y_model,
            padded,
            padded_hw,
            text=self.text.expand(batch, -1, -1),
            null=self.null.expand(batch, -1, -1),
            config=self.config,
            generators=generators,
            callback=both(callback, check),
        )
        if conflicts is not None:
            conflicts.add(check)
        x = imaging.from_rgb(x[..., : image_hw[0], : image_hw[1]].detach().cpu(), y.shape[1])
        return x if self.finish is None else self.finish(x, y, operator, seeds)

    def preview(self, z0: torch.Tensor, run: Run, hw: tuple[int, int]) -> np.ndarray:
        """The estimate ``z0`` of one plane, decoded and shaped like one output plane (input units)."""
        with torch.no_grad():
            x = self.prior.decode(z0).float().cpu()
        x = imaging.from_rgb(x[..., : hw[0], : hw[1]], run.layout.channels)
        plane = run.to_output(x)[0]
        return np.moveaxis(plane, 0, -1) if run.layout.rgb else plane[0]

    def batch_size(self, run: Run) -> int:
        """The run's batch size as a number: ``"auto"`` asks the device how many planes fit."""
        if run.options.batch_size != "auto":
            return run.options.batch_size
        if run.plan is None:
            hw = run.operator.image_hw(run.layout.hw)
            planes = len(run.measured)
        else:
            hw = (run.plan.tile_hw[0] * run.plan.scale, run.plan.tile_hw[1] * run.plan.scale)
            planes = max(run.unit_sizes())
        return auto_batch_size(planes, hw, self.prior.dtype, free_bytes(self.prior.device))

    # -- provenance -------------------------------------------------------------------------

    def provenance(self, run: Run, batch_size: int, restored: np.ndarray, seconds: float) -> dict:
        """The run's info: every parameter needed to replay it, the model, versions, residual, time."""
        options = run.options
        x = torch.from_numpy(run.scale.to_model(restored))
        y = torch.from_numpy(run.planes)
        info = {
            "params": {
                "operator": repr(run.operator),
                "prompt": self.prompt,
                "negative_prompt": self.negative_prompt,
                "method": self.method,
                **asdict(options),
                "rgb": run.layout.rgb,
                "batch_size": batch_size,
                "intensity_range": [run.scale.low, run.scale.high],
                **self.config.as_dict(),
            },
            "model": self.prior.name,
            "test_model": self.prior.is_test_model,
            "device": str(self.prior.device),
            "dtype": str(self.prior.dtype).replace("torch.", ""),
            "seed": options.seed,
            **residual_summary(residual_sums(run.operator, x, y), options.noise),
            "intensity_range": [run.scale.low, run.scale.high],
            "seconds": seconds,
            "versions": package_versions(),
        }
        if run.plan is not None:
            info["tiling"] = run.plan.describe(options.tile_size, options.tile_overlap, len(run.unit_sizes()))
        return info


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
