"""The public API: ``degrade`` simulates a measurement, ``restore`` runs TReg on one.

NumPy in, NumPy out; inputs are never modified. See ``docs/api.md``.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import imaging
from .errors import Cancelled, InvalidInputError
from .memory import auto_batch_size, free_bytes, guard_memory
from .models.base import DiffusionPrior
from .operators import LinearOperator
from .solver import TRegConfig, get_method
from .solver.divergence import check_finite

ProgressCallback = Callable[..., None]
CancelSignal = threading.Event | Callable[[], bool] | None


def degrade(
    image: np.ndarray,
    operator: LinearOperator,
    *,
    noise: float = 0.01,
    seed: int | None = 0,
    rgb: bool | None = None,
) -> np.ndarray:
    """Simulate a measurement ``y = A x + n`` of a clean image.

    Parameters
    ----------
    image : array
        Clean image: (H, W) grey, (H, W, 3) RGB or a stack (..., H, W).
    operator : LinearOperator
        The forward model, e.g. ``SuperResolution(factor=4)``.
    noise : float
        Standard deviation of the Gaussian noise, in the model's units: the image's
        0.1-99.9 percentile range is [-1, 1], so 0.01 is 0.5 % of that range.
    seed : int or None
        Seed of the noise (None: a random one).
    rgb : bool, optional
        Whether the last axis is colour; default: a last axis of 3 or 4.

    Returns
    -------
    ndarray, float32
        The measurement in the input's intensity scale; for super-resolution
        its planes are ``factor`` times smaller.
    """
    noise = _finite(noise, "noise", minimum=0.0)
    if noise > imaging.MAX_NOISE_SIGMA:
        raise InvalidInputError(f"noise must be at most {imaging.MAX_NOISE_SIGMA:g} (50x the image range), got {noise}")
    array = imaging.check_image(image)
    layout = imaging.layout_of(array, rgb)
    operator.check_image_hw(layout.hw)
    planes = imaging.to_planes(array, layout)
    scale = imaging.IntensityScale.from_data(planes)
    x = torch.from_numpy(scale.to_model(planes)).double()
    y = operator.forward(x)
    if noise > 0:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        y = y + noise * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    result = imaging.from_planes(scale.from_model(y.numpy()), layout)
    check_finite(result, "the simulated measurement", advice="use a smaller noise or rescale the image")
    return result


def restore(
    image: np.ndarray,
    operator: LinearOperator,
    *,
    prompt: str = "",
    negative_prompt: str = "",
    guidance: float = 5.0,
    steps: int = 200,
    dc_every: int = 3,
    dc_until: float = 0.85,
    cg_iterations: int = 5,
    cg_lambda: float = 1e-4,
    adaptive_negation: bool = True,
    negation_lr: float = 8e-4,
    negation_steps: int = 10,
    method: str = "treg",
    seed: int = 0,
    model: str | DiffusionPrior = "sd15",
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    rgb: bool | None = None,
    batch_size: int | str = "auto",
    progress: ProgressCallback | None = None,
    preview_every: int = 0,
    cancel: CancelSignal = None,
    return_info: bool = False,
    tile_size: int | None = None,
    tile_overlap: int = 64,
    intensity_range: tuple[float, float] | None = None,
    noise: float | None = None,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """Restore an image from its measurement ``y = A x + n`` with TReg.

    Parameters
    ----------
    image : array
        The measurement, as a napari layer holds it: (H, W) grey, (H, W, 3) RGB
        or a stack (..., H, W) restored plane by plane; uint8, uint16 or float.
    operator : LinearOperator
        The forward model that produced it (see :mod:`napari_treg.operators`).
    prompt, negative_prompt : str
        What the image shows, and what it should not look like.
    guidance : float
        Classifier-free guidance weight (0 = no text).
    steps : int
        DDIM steps (reference 200).
    dc_every, dc_until : int, float
        Data consistency on every ``dc_every``-th step over the first ``dc_until``
        fraction of the trajectory (reference: 3 and 0.85, 57 of 200 steps).
    cg_iterations, cg_lambda : int, float
        Conjugate-gradient iterations and proximal weight of each data-consistency step.
    adaptive_negation, negation_lr, negation_steps : bool, float, int
        Null-text optimisation in CLIP space (README: 1e-3 for SR, 5e-4 for deblur).
    method : str
        ``"treg"``, or a baseline registered in ``napari_treg.solver.METHODS``.
    seed : int
        Seed of the sampler; plane ``k`` of a stack uses ``seed + k``.
    model : str or DiffusionPrior
        ``"sd15"``, a hub id, a local folder, a checkpoint file, ``"tiny"`` (test
        model, no meaningful image), ``"analytic"``, or a loaded prior.
    device, dtype
        ``"auto"`` picks cuda, mps, cpu; dtype float16 on cuda, float32 otherwise.
    rgb : bool, optional
        Whether the last axis is colour; default: a last axis of 3 or 4.
    batch_size : int or "auto"
        Planes of a stack solved together. ``"auto"``: on a CUDA GPU as many as fit in its
        free memory, at most 4; elsewhere 1.
    progress : callable, optional
        ``progress(step, total, preview=None)`` after every step; ``preview`` is the
        current estimate of the current plane, every ``preview_every`` steps.
    cancel : threading.Event or callable, optional
        Checked every step; when set, :class:`~napari_treg.errors.Cancelled` is raised.
    tile_size, tile_overlap : int
        Restore images larger than ``tile_size`` (restored pixels; 512 suits SD 1.5) in
        overlapping tiles blended without seams (:mod:`napari_treg.tiling`); None: one piece.
    intensity_range : (float, float), optional
        The input intensities mapped to the model's -1 and 1; default the 0.1 and 99.9
        percentiles of the whole input (tiling passes the whole image's range to every tile).
    noise : float, optional
        The measurement's noise sigma in model units (as in :func:`degrade`). Only reported:
        ``info["residual_over_noise"]`` is the RMS residual over it (about 1 = consistent with
        the measurement at its noise level). TReg's data-consistency step does not use it.
    return_info : bool
        Also return a dict with the parameters, model, versions, run time and the
        data-consistency residual ``||A x - y|| / ||y||`` over the measured values.

    Returns
    -------
    ndarray, float32
        The restored image in the input's intensity scale and layout (for
        super-resolution ``factor`` times larger), and the info dict if asked.
    """
    if tile_size is not None and _needs_tiles(image, operator, rgb, tile_size):
        from .tiling import restore_tiled

        return restore_tiled(
            image, operator, tile_size=tile_size, tile_overlap=tile_overlap, rgb=rgb, seed=seed,
            progress=progress, preview_every=preview_every, return_info=return_info,
            prompt=prompt, negative_prompt=negative_prompt, guidance=guidance, steps=steps, dc_every=dc_every,
            dc_until=dc_until, cg_iterations=cg_iterations, cg_lambda=cg_lambda,
            adaptive_negation=adaptive_negation, negation_lr=negation_lr, negation_steps=negation_steps,
            method=method, model=model, device=device, dtype=dtype, batch_size=batch_size, cancel=cancel,
            intensity_range=intensity_range, noise=noise,
        )
    started = time.perf_counter()
    noise = None if noise is None else _finite(noise, "noise", minimum=0.0)
    config = make_config(
        steps=steps, guidance=guidance, dc_every=dc_every, dc_until=dc_until, cg_iterations=cg_iterations,
        cg_lambda=cg_lambda, adaptive_negation=adaptive_negation, negation_lr=negation_lr,
        negation_steps=negation_steps,
    )
    run = _Run.prepare(image, operator, rgb, batch_size, config, seed, method, intensity_range)
    is_cancelled = cancel_checker(cancel)
    _raise_if(is_cancelled)
    prior = get_prior(model, device, dtype)
    _raise_if(is_cancelled)
    _warn_if_slow(prior)
    run.batch_size = resolve_batch_size(run.batch_size, prior, len(run.planes), run.operator.image_hw(run.layout.hw))
    text = prior.embed_text([_text(prompt, "prompt")])
    null = prior.embed_text([_text(negative_prompt, "negative_prompt")])
    result, sums = guard_memory(lambda: run.execute(prior, text, null, progress, preview_every, is_cancelled))
    _raise_if(is_cancelled)  # cancelled during the last step: still nothing is returned
    if not return_info:
        return result
    info = {
        "params": {
            "operator": repr(operator), "prompt": prompt, "negative_prompt": negative_prompt,
            "method": method, "seed": seed, "rgb": run.layout.rgb, "batch_size": run.batch_size,
            **config.as_dict(),
        },
        "model": prior.name,
        "test_model": prior.is_test_model,
        "device": str(prior.device),
        "dtype": str(prior.dtype).replace("torch.", ""),
        "seed": seed,
        **residual_summary(sums, noise),
        "intensity_range": [run.scale.low, run.scale.high],
        "seconds": time.perf_counter() - started,
        "versions": package_versions(),
    }
    return result, info


def _needs_tiles(image, operator: LinearOperator, rgb, tile_size) -> bool:
    """Whether the restored image is larger than one tile (checked inputs; errors come from restore)."""
    size = _integer(tile_size, "tile_size", minimum=8)
    layout = imaging.layout_of(imaging.check_image(image), rgb)
    return max(operator.image_hw(layout.hw)) > size


def _intensity_scale(planes: np.ndarray, intensity_range) -> imaging.IntensityScale:
    if intensity_range is None:
        return imaging.IntensityScale.from_data(planes)
    try:
        low, high = (float(v) for v in intensity_range)
    except (TypeError, ValueError):
        raise InvalidInputError(f"intensity_range must be two numbers (low, high), got {intensity_range!r}") from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise InvalidInputError(f"intensity_range must be finite with low < high, got {intensity_range!r}")
    return imaging.IntensityScale(low, high)


def get_prior(model: str | DiffusionPrior, device: str, dtype) -> DiffusionPrior:
    """``model`` if it is a loaded prior, else the loaded (cached) model it names."""
    if isinstance(model, DiffusionPrior):
        return model
    return guard_memory(lambda: _load(model, device, dtype))


def _load(model: str, device: str, dtype) -> DiffusionPrior:
    from .models import load_model  # imports diffusers: only when a model is needed

    return load_model(model, device=device, dtype=dtype)


def _text(value: str | None, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, got {type(value).__name__}")
    return value


def _warn_if_slow(prior: DiffusionPrior) -> None:
    if prior.device.type == "cpu" and not prior.is_test_model:
        warnings.warn(
            f"{prior.name} runs on the CPU: expect many seconds per step (minutes to hours per image); "
            "a CUDA GPU or Apple-silicon (mps) device is strongly recommended",
            stacklevel=3,
        )


def make_config(**params) -> TRegConfig:
    """A :class:`TRegConfig` from keyword values, each checked with a clear error."""
    steps = _integer(params["steps"], "steps", minimum=1)
    if steps > 1000:
        raise InvalidInputError(f"steps must be at most 1000 (the model's training steps), got {steps}")
    dc_until = _finite(params["dc_until"], "dc_until", minimum=0.0)
    if dc_until > 1:
        raise InvalidInputError(f"dc_until is a fraction of the steps in [0, 1], got {dc_until}")
    cg_lambda = _finite(params["cg_lambda"], "cg_lambda", minimum=0.0)
    if cg_lambda == 0:
        raise InvalidInputError("cg_lambda must be > 0 (it keeps the CG system well posed)")
    return TRegConfig(
        steps=steps,
        guidance=_finite(params["guidance"], "guidance"),
        dc_every=_integer(params["dc_every"], "dc_every", minimum=0),
        dc_until=dc_until,
        cg_iterations=_integer(params["cg_iterations"], "cg_iterations", minimum=0),
        cg_lambda=cg_lambda,
        adaptive_negation=bool(params["adaptive_negation"]),
        negation_lr=_finite(params["negation_lr"], "negation_lr", minimum=0.0),
        negation_steps=_integer(params["negation_steps"], "negation_steps", minimum=0),
    )


@dataclass
class _Run:
    """One ``restore`` call's data: the measurement as planes, and how to batch them."""

    operator: LinearOperator
    layout: imaging.Layout
    planes: np.ndarray  # (N, C, h, w), model units
    scale: imaging.IntensityScale
    batch_size: int | str  # "auto" until the model is known
    config: TRegConfig
    seed: int
    sampler: Callable

    @classmethod
    def prepare(cls, image, operator, rgb, batch_size, config, seed, method, intensity_range=None) -> _Run:
        if not isinstance(operator, LinearOperator):
            raise InvalidInputError(
                f"operator must be one of napari_treg.operators (e.g. SuperResolution(4)), got {operator!r}"
            )
        array = imaging.check_image(image)
        layout = imaging.layout_of(array, rgb)
        image_hw = operator.image_hw(layout.hw)
        if min(image_hw) < 8:
            raise InvalidInputError(f"the restored image would be {image_hw[0]}x{image_hw[1]}; at least 8x8 is needed")
        operator.check_image_hw(image_hw)
        planes = imaging.to_planes(array, layout)
        scale = _intensity_scale(planes, intensity_range)
        return cls(
            operator, layout, scale.to_model(planes), scale,
            _batch_size(batch_size), config,
            _integer(seed, "seed", minimum=0), get_method(method),
        )

    def execute(self, prior, text, null, progress, preview_every, is_cancelled) -> tuple[np.ndarray, np.ndarray]:
        """Solve every batch of planes; returns the result and the residual sums (see residual_sums)."""
        results, sums = [], np.zeros(3)
        batches = range(0, len(self.planes), self.batch_size)
        total = len(batches) * self.config.steps
        for number, first in enumerate(batches):
            y = torch.from_numpy(self.planes[first : first + self.batch_size])
            callback = _step_callback(self, prior, number, total, progress, preview_every, is_cancelled)
            x = self.solve(prior, y, text, null, first, callback)
            sums += residual_sums(self.operator, x, y)
            results.append(self.to_output(x))
        return imaging.from_planes(np.concatenate(results), self.layout), sums

    def solve(self, prior, y, text, null, first, callback) -> torch.Tensor:
        """One batch: pad to the model's size multiple, sample, crop back (model units)."""
        image_hw = self.operator.image_hw(tuple(y.shape[-2:]))
        pad_h, pad_w = imaging.pad_amounts(self.operator, tuple(y.shape[-2:]), prior.size_multiple)
        y_model = imaging.mirror_pad(imaging.to_rgb(y), pad_h, pad_w)
        padded_hw = self.operator.image_hw(tuple(y_model.shape[-2:]))
        operator = self.operator.padded(padded_hw[0] - image_hw[0], padded_hw[1] - image_hw[1])
        batch = y.shape[0]
        generators = [torch.Generator().manual_seed(self.seed + first + k) for k in range(batch)]
        x = self.sampler(
            prior, y_model, operator, padded_hw,
            text=text.expand(batch, -1, -1), null=null.expand(batch, -1, -1),
            config=self.config, generators=generators, callback=callback,
        )
        x = x[..., : image_hw[0], : image_hw[1]].detach().cpu()
        return imaging.from_rgb(x, self.layout.channels)

    def to_output(self, x: torch.Tensor) -> np.ndarray:
        return self.scale.from_model(x.numpy())


def resolve_batch_size(batch_size: int | str, prior: DiffusionPrior, planes: int, image_hw: tuple[int, int]) -> int:
    """``batch_size`` as a number: ``"auto"`` asks the device how many planes fit (see memory.py)."""
    if batch_size != "auto":
        return _batch_size(batch_size)
    return auto_batch_size(planes, image_hw, prior.dtype, free_bytes(prior.device))


def _batch_size(value: int | str) -> int | str:
    if isinstance(value, str):
        if value == "auto":
            return value
        raise InvalidInputError(f"batch_size must be a whole number >= 1 or 'auto', got {value!r}")
    return _integer(value, "batch_size", minimum=1)


def _step_callback(run, prior, number, total, progress, preview_every, is_cancelled):
    """Progress, preview and cancel, checked after every sampler step."""

    def callback(state: dict) -> None:
        _raise_if(is_cancelled)
        if progress is None:
            return
        done = number * run.config.steps + state["i"] + 1
        preview = None
        if preview_every and (state["i"] + 1) % preview_every == 0:
            preview = _preview(run, prior, state["z0"][:1])
        progress(done, total, preview=preview)

    return callback


def _preview(run: _Run, prior: DiffusionPrior, z0: torch.Tensor) -> np.ndarray:
    """The current estimate of the first plane of the batch, shaped like one output plane."""
    with torch.no_grad():
        x = prior.decode(z0).float().cpu()
    image_hw = run.operator.image_hw(run.layout.hw)
    x = imaging.from_rgb(x[..., : image_hw[0], : image_hw[1]], run.layout.channels)
    plane = run.to_output(x)[0]
    return np.moveaxis(plane, 0, -1) if run.layout.rgb else plane[0]


def residual_sums(operator: LinearOperator, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``[||A x - y||^2, ||y||^2, m]`` over the ``m`` measured values, in model units (float64).

    Values the operator does not measure (an inpainting mask's missing pixels) do not count,
    whatever the measurement holds there.
    """
    y = operator.measured(y.double())
    error = float(((operator.forward(x.double()) - y) ** 2).sum())
    count = int(torch.count_nonzero(operator.measured(torch.ones_like(y))))
    return np.array([error, float((y**2).sum()), count])


def residual_summary(sums: np.ndarray, noise: float | None) -> dict:
    """``residual`` = ``||A x - y|| / ||y||``; ``residual_over_noise`` = RMS residual / noise sigma.

    ``residual_over_noise`` is about 1 for a result consistent with the measurement at its noise
    level, and None when the noise level is not given.
    """
    error, norm, count = sums
    return {
        "residual": math.sqrt(error / norm) if norm > 0 else 0.0,
        "noise": noise,
        "residual_over_noise": math.sqrt(error / count) / noise if noise and count else None,
    }


def cancel_checker(cancel: CancelSignal) -> Callable[[], bool]:
    """A function telling whether ``cancel`` (Event, callable or None) is set."""
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise InvalidInputError(f"cancel must be a threading.Event or a callable, got {type(cancel).__name__}")


def _raise_if(is_cancelled: Callable[[], bool]) -> None:
    if is_cancelled():
        raise Cancelled("the restoration was cancelled; nothing was returned")


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a result (for provenance)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("napari-treg", "torch", "diffusers", "transformers", "numpy"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _finite(value, name: str, minimum: float | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InvalidInputError(f"{name} must be finite, got {value!r}")
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum:g}, got {value!r}")
    return number


def _integer(value, name: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if not (isinstance(value, float) and value.is_integer()):
            raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    if minimum is not None and number < minimum:
        raise InvalidInputError(f"{name} must be >= {minimum}, got {value!r}")
    return number
