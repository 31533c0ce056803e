"""The public API: ``degrade`` simulates a measurement, ``restore`` runs TReg on one, ``ensemble`` many times.

NumPy in, NumPy out; inputs are never modified. See ``docs/api.md``. Both are thin:
``restore`` builds a :class:`~napari_treg.engine.restorer.Restorer` and calls it.
"""

from __future__ import annotations

import inspect
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

from napari_treg.engine.ensemble import Ensemble, EnsembleSettings, check_ensemble, ensemble_prepared
from napari_treg.engine.restore_settings import RestoreSettings
from napari_treg.engine.restorer import (
    MAX_SEED,
    Progress,
    ProgressCallback,
    Restoration,
    Restorer,
    RunSettings,
    noise_model_values,
    prepare,
)
from napari_treg.errors import CancelSignal, InvalidInputError, cancel_checker, raise_if
from napari_treg.imaging import layout as imaging
from napari_treg.imaging.noise import NoiseDefaults, PoissonGaussian
from napari_treg.memory import guard_memory
from napari_treg.models.base import DiffusionPrior
from napari_treg.models.loading import warn_if_slow
from napari_treg.models.options import ModelSettings
from napari_treg.operators import LinearOperator
from napari_treg.settings import check_integer, check_number
from napari_treg.solver import TRegSettings
from napari_treg.solver.divergence import check_finite
from napari_treg.solver.schedules import method_config
from napari_treg.solver.text import TextSettings

#: defaults of :func:`degrade` (the CLI's ``degrade`` options read them here)
DEGRADE_DEFAULTS: dict[str, Any] = {"noise": 0.01, "seed": 0}


def degrade(
    image: np.ndarray,
    operator: LinearOperator,
    *,
    noise: float = DEGRADE_DEFAULTS["noise"],
    seed: int | None = DEGRADE_DEFAULTS["seed"],
    rgb: bool | None = None,
    noise_model: PoissonGaussian | str = RunSettings.noise_model,
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
    noise_model : PoissonGaussian or "gaussian"
        ``"gaussian"`` (default): the Gaussian ``noise``. A PoissonGaussian: photon noise in the
        image's own units (ADU or photons); the measurement is
        ``gain * Poisson((A x - offset) / gain) + offset + N(0, read_sd^2)``, seeded by ``seed``,
        in place of the Gaussian ``noise`` (which is then not added).

    Returns
    -------
    ndarray, float32
        The measurement in the input's intensity scale; for super-resolution
        its planes are ``factor`` times smaller.

    Raises
    ------
    InvalidInputError
        The image, the operator, ``noise`` or ``seed`` cannot be used (the message names it).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_treg import degrade
    >>> from napari_treg.operators import SuperResolution
    >>> clean = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> degrade(clean, SuperResolution(factor=2), noise=0.01, seed=0).shape
    (16, 16)
    """
    noise = check_number(noise, "noise", minimum=0.0, maximum=imaging.MAX_NOISE_SIGMA)
    if seed is not None:
        seed = check_integer(seed, "seed", minimum=0, maximum=MAX_SEED)
    photon = noise_model if isinstance(noise_model, PoissonGaussian) else None
    if photon is None and noise_model not in (None, "gaussian"):
        raise InvalidInputError(
            "noise_model must be 'gaussian' or a napari_treg.noise.PoissonGaussian(gain, read_sd, offset) "
            f"(a simulation has nothing to estimate it from), got {noise_model!r}"
        )
    array = imaging.check_image(image)
    layout = imaging.layout_of(array, rgb)
    operator.check_image_hw(layout.hw)
    planes = imaging.to_planes(array, layout)
    scale = imaging.IntensityScale.from_data(planes)
    x = torch.from_numpy(scale.to_model(planes)).double()
    y = operator.forward(x)
    if photon is not None:
        clean = scale.from_model(y.numpy()).astype(np.float64)  # A x in the input's units
        result = imaging.from_planes(photon.simulate(clean, np.random.default_rng(seed)).astype(np.float32), layout)
        check_finite(result, "the simulated measurement", advice="check the noise model's gain and offset")
        return result
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
    prompt: str = TextSettings.prompt,
    negative_prompt: str = TextSettings.negative_prompt,
    guidance: float = TRegSettings.guidance,
    steps: int = TRegSettings.steps,
    seed: int = RunSettings.seed,
    model: str | DiffusionPrior = ModelSettings.model,
    device: str = ModelSettings.device,
    dtype: str | torch.dtype | None = ModelSettings.dtype,
    method: str = TextSettings.method,
    rgb: bool | None = RunSettings.rgb,
    batch_size: int | str = RunSettings.batch_size,
    tile_size: int | None = RunSettings.tile_size,
    tile_overlap: int = RunSettings.tile_overlap,
    noise: float | None = RunSettings.noise,
    noise_model: str | PoissonGaussian = RunSettings.noise_model,
    gain: float | None = RunSettings.gain,
    read_sd: float | None = RunSettings.read_sd,
    offset: float | None = RunSettings.offset,
    noise_defaults: NoiseDefaults | None = None,
    intensity_range: tuple[float, float] | None = None,
    progress: Callable[[Progress], None] | None = None,
    preview_every: int = RunSettings.preview_every,
    cancel: CancelSignal = None,
    return_info: bool = False,
    schedule: str = TextSettings.schedule,
    **settings: Any,
) -> np.ndarray | Restoration:
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
    seed : int
        Seed of the sampler; plane ``k`` of a stack uses ``seed + k``.
    model : str or DiffusionPrior
        ``"sd15"``, a hub id, a local folder, a checkpoint file, ``"tiny"`` (test
        model, no meaningful image), ``"analytic"``, or a loaded prior.
    device, dtype
        ``"auto"`` picks cuda, mps, cpu; dtype float16 on cuda, float32 otherwise.
    method : str
        ``"treg"``, or a baseline registered in ``napari_treg.solver.METHODS``.
    rgb : bool, optional
        Whether the last axis is colour; default: a last axis of 3 or 4.
    batch_size : int or "auto"
        Planes of a stack solved together. ``"auto"``: on a CUDA GPU as many as fit in its
        free memory, at most 4; elsewhere 1.
    tile_size, tile_overlap : int
        Restore images larger than ``tile_size`` (restored pixels; 512 suits SD 1.5) in
        overlapping tiles blended without seams (:mod:`napari_treg.engine.tiling`); None: one piece.
    noise : float, optional
        The measurement's noise sigma in model units (as in :func:`degrade`). Only reported:
        ``info["residual_over_noise"]`` is the RMS residual over it (about 1 = consistent with
        the measurement at its noise level). TReg's data-consistency step does not use it.
    noise_model : "gaussian", "poisson-gaussian" or PoissonGaussian, optional
        Photon noise (:class:`napari_treg.noise.PoissonGaussian`, in the input's units): every data
        step then weighs each measured value by ``1 / var`` at the current estimate, and the residual
        is reported in noise units per value. ``"poisson-gaussian"``: its parameters estimated from
        the image (:func:`napari_treg.noise.estimate_poisson_gaussian`). ``info["noise_model"]``
        records it in the input's units and in model units. Default: one Gaussian level.
    gain, read_sd, offset : float, optional
        The Poisson-Gaussian model's parameters one by one (as the command line gives them), with
        ``noise_model="poisson-gaussian"``; gain and read_sd both or neither (then estimated).
    noise_defaults : NoiseDefaults, optional
        Camera values recorded with the image (:class:`napari_treg.noise.NoiseDefaults`, e.g.
        ``napari_treg.io.files.read_noise_defaults(path)`` of an OME-TIFF): with
        ``noise_model="poisson-gaussian"`` the recorded offset is the default of ``offset`` and the
        recorded gain that of ``gain`` (read_sd then fitted with it); ``info["noise_model"]["source"]`` says so.
    intensity_range : (float, float), optional
        The input intensities mapped to the model's -1 and 1; default the 0.1 and 99.9
        percentiles of the whole input.
    progress : callable, optional
        ``progress(event)`` after every step with a :class:`~napari_treg.engine.restorer.Progress`
        (``step``, ``total``, ``plane``, ``planes``, ``tile``, ``tiles``, ``preview``); the
        preview is the current estimate every ``preview_every`` steps.
    cancel : threading.Event or callable, optional
        Checked every step; when set, :class:`~napari_treg.errors.Cancelled` is raised.
    return_info : bool
        Return a :class:`~napari_treg.engine.restorer.Restoration` ``(image, info)``: the parameters
        (enough to replay the run), model, versions, run time and the data-consistency
        residual ``||A x - y|| / ||y||`` over the measured values.
    schedule : str
        A named data-consistency schedule (``napari_treg.solver.SCHEDULES``): ``"paper"`` (the
        paper's), or ``"faithful"`` (the paper's plus a final projection onto the measurement, so
        the result agrees with it to the noise level; docs/validation.md). Settings given
        explicitly below override the schedule's.
    **settings
        The method's other settings (:class:`~napari_treg.solver.TRegSettings`): ``dc_every``,
        ``dc_until``, ``cg_iterations``, ``cg_lambda``, ``adaptive_negation``, ``negation_lr``,
        ``negation_steps``, ``final_dc``.

    Returns
    -------
    ndarray, float32, or Restoration
        The restored image in the input's intensity scale and layout (for
        super-resolution ``factor`` times larger); with ``return_info`` also its info.

    Raises
    ------
    InvalidInputError
        The image, the operator or a setting cannot be used as given (the message names it),
        including a prompt that is not UTF-8 text.
    ModelNotFoundError
        ``model`` names weights that are missing, unreachable or not a model.
    OutOfMemoryError
        The device ran out of memory (its memory is released first); try a smaller
        ``batch_size`` or ``tile_size``.
    DivergenceError
        The sampler produced NaN or inf values.
    Cancelled
        ``cancel`` was set; nothing is returned.

    Examples
    --------
    ``model="tiny"`` is a random-weight test model: the call runs, the image means nothing.

    >>> import numpy as np
    >>> from napari_treg import restore
    >>> from napari_treg.operators import SuperResolution
    >>> measurement = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    >>> restored = restore(measurement, SuperResolution(factor=2), prompt="a cell", model="tiny", steps=4)
    >>> restored.shape, restored.dtype
    ((32, 32), dtype('float32'))
    >>> image, info = restore(measurement, SuperResolution(factor=2), model="tiny", steps=4, return_info=True)
    >>> info["seed"], info["residual"] < 1
    (0, True)
    """
    config = method_config(schedule, {"guidance": guidance, "steps": steps, **settings})
    options = RunSettings(
        seed=seed,
        rgb=rgb,
        batch_size=batch_size,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
        noise=noise,
        preview_every=preview_every,
        **{"gain": gain, "read_sd": read_sd, "offset": offset, **noise_model_values(noise_model)},
    )
    run = prepare(image, operator, options, intensity_range, noise_defaults)
    callback, prior = front_door(model, device, dtype, progress, cancel)
    restorer = Restorer(prior, config, method=method, prompt=prompt, negative_prompt=negative_prompt)
    restoration = restorer.restore_prepared(run, callback, cancel)
    return restoration if return_info else restoration.image


def ensemble(
    image: np.ndarray,
    operator: LinearOperator,
    *,
    samples: int = EnsembleSettings.samples,
    noise: float | None = None,
    noise_model: str | PoissonGaussian = RunSettings.noise_model,
    keep_samples: bool = EnsembleSettings.keep_samples,
    prior_sd: float | None = EnsembleSettings.prior_sd,
    holdout: float | None = EnsembleSettings.holdout,
    plane_exchange: bool = EnsembleSettings.plane_exchange,
    noise_defaults: NoiseDefaults | None = None,
    model: str | DiffusionPrior = "sd15",
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    intensity_range: tuple[float, float] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelSignal = None,
    **settings: Any,
) -> Ensemble:
    """Restore ``image`` ``samples`` times and return their mean, spread, data share and text influence.

    Takes :func:`napari_treg.restore`'s keywords (``prompt``, ``guidance``, ``steps``, ``seed``,
    ``schedule``, ``batch_size``, ...; sample ``k`` of plane ``i`` uses ``seed + k * planes + i``).
    ``noise`` is the measurement's noise sigma in model units (as in :func:`napari_treg.degrade`);
    None estimates it from the image (``info["noise_source"]`` says which). ``noise_model``: photon
    noise as in :func:`napari_treg.restore` (each sample's last step then perturbs every value by its
    own ``sqrt(var)``, and the data share comes from the same weighted system). ``prior_sd``: see
    :class:`EnsembleSettings`. ``noise_defaults``: as in :func:`napari_treg.restore`.
    ``holdout`` (a fraction below 0.5, e.g. 0.1; at least 4 samples): first restore
    without that share of the measured values, check how the spread predicts them, and scale the spread of
    invented pixels by the fitted factor (``info["holdout"]``: coverage before and after, factor, values, cost,
    verdict line; ``uncorrected_std`` keeps the std before; docs/uncertainty.md). ``plane_exchange``: a z-stack
    under a :class:`~napari_treg.operators.VolumeBlur` lets its samples trade planes by the measurement's evidence
    (``info["plane_exchange"]``; docs/uncertainty.md "Volumes"); False: each sample alone. Everything is checked
    before any work; ``cancel`` returns nothing.

    Raises
    ------
    InvalidInputError
        The image, the operator or a setting cannot be used (the message names it), or
        ``seed + samples * planes`` leaves the seed range.
    ModelNotFoundError
        ``model`` names weights that are missing, unreachable or not a model.
    OutOfMemoryError
        The samples, or the device, do not fit in memory.
    DivergenceError
        A sample holds NaN or inf values.
    Cancelled
        ``cancel`` was set; nothing is returned.

    Examples
    --------
    >>> import numpy as np
    >>> from napari_treg import ensemble
    >>> from napari_treg.operators import GaussianBlur
    >>> measurement = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    >>> result = ensemble(measurement, GaussianBlur(sigma=1.0), samples=2, noise=0.05, model="tiny", steps=4)
    >>> result.mean.shape
    (32, 32)
    """
    started = time.perf_counter()
    options = EnsembleSettings(
        samples=samples, keep_samples=keep_samples, prior_sd=prior_sd, holdout=holdout, plane_exchange=plane_exchange
    )
    values = {**settings, "noise": noise, **noise_model_values(noise_model)}
    typed = RestoreSettings.from_values(values, "ensemble setting")
    run = prepare(image, operator, typed.run, intensity_range, noise_defaults)
    check_ensemble(run, options)
    callback, prior = front_door(model, device, dtype, progress, cancel)
    restorer = typed.restorer(prior)
    return ensemble_prepared(restorer, run, options, callback, cancel, started)


def front_door(
    model: str | DiffusionPrior,
    device: str,
    dtype: str | torch.dtype | None,
    progress: Callable | None,
    cancel: CancelSignal,
) -> tuple[Callable[[Progress], None] | None, DiffusionPrior]:
    """What ``restore`` and ``ensemble`` do once their input is checked: the progress callback, and the prior
    (loaded unless cancelled before or while it loads; a slow device is warned about)."""
    callback = progress_callback(progress)
    is_cancelled = cancel_checker(cancel)
    raise_if(is_cancelled)
    prior = get_prior(model, device, dtype)
    raise_if(is_cancelled)
    warn_if_slow(prior)
    return callback, prior


def get_prior(
    model: str | DiffusionPrior, device: str = "auto", dtype: str | torch.dtype | None = None
) -> DiffusionPrior:
    """``model`` if it is a loaded prior, else the loaded (cached) model it names."""
    if isinstance(model, DiffusionPrior):
        return model
    return guard_memory(lambda: _load(model, device, dtype))


def _load(model: str, device: str, dtype: str | torch.dtype | None) -> DiffusionPrior:
    from napari_treg.models import load_model  # imports diffusers: only when a model is needed

    return load_model(model, device=device, dtype=dtype)


def progress_callback(progress: Callable | None) -> Callable[[Progress], None] | None:
    """``progress`` as a callback of :class:`Progress` events.

    A callback of the old form ``progress(step, total, preview=None)`` still works (with a
    DeprecationWarning that names the new form).
    """
    if progress is None:
        return None
    if not callable(progress):
        raise InvalidInputError(f"progress must be a function of one Progress event, got {type(progress).__name__}")
    if _required_positional(progress) < 2:
        return progress
    warnings.warn(
        "progress(step, total, preview) is deprecated: progress now receives one napari_treg.engine.restorer.Progress "
        "event (event.step, event.total, event.plane, event.preview, ...)",
        DeprecationWarning,
        stacklevel=3,
    )
    return lambda event: progress(event.step, event.total, preview=event.preview)


def _required_positional(function: Callable) -> int:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in parameters if p.kind in kinds and p.default is inspect.Parameter.empty)
