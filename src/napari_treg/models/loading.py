"""Choosing, fetching and loading diffusion priors: :func:`load_model`.

A model spec is one of

- ``"sd15"``: Stable Diffusion 1.5 from the Hugging Face hub (or its local cache),
- a hub id ``"owner/name"`` of a diffusers-format SD 1.x repository,
- a local diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``),
- a single ``.safetensors`` (preferred) or ``.ckpt`` checkpoint file,
- ``"tiny"`` (random-weight test model) or ``"analytic"`` (closed-form test prior),
- a :class:`DiffusionPrior` instance, returned as is.

This module reads the spec, hands it to :mod:`.hub` (downloads, the Hugging Face cache) or
:mod:`.files` (local folders and checkpoint files), and keeps the loaded models in a
per-process cache. Every failure raises :class:`~napari_treg.errors.ModelNotFoundError`
saying what is missing and how to get it.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path

import torch

from napari_treg.errors import InvalidInputError, ModelNotFoundError, UnknownModelError
from napari_treg.models.base import DiffusionPrior
from napari_treg.models.devices import resolve_device, resolve_dtype
from napari_treg.models.files import CHECKPOINT_SUFFIXES, load_checkpoint_file, load_pipeline_folder
from napari_treg.models.hub import (
    CLIP_IMAGE_REPO,
    SD15_REPO,
    Progress,
    disable_telemetry,
    fetch_image_tower,
    fetch_pipeline,
)

MODEL_NAMES = ("sd15", "tiny", "analytic")

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_CACHE: dict[tuple, DiffusionPrior] = {}
_LOCK = threading.RLock()


# -- the public entry point -------------------------------------------------------------------


def load_model(
    spec: str | os.PathLike | DiffusionPrior = "sd15",
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    progress: Progress | None = None,
    *,
    config: str | os.PathLike | None = None,
    low_memory: bool = False,
    compile: bool = False,
) -> DiffusionPrior:
    """Load (or fetch, then load) a diffusion prior; see the module docstring for ``spec``.

    Parameters
    ----------
    spec
        Model name, hub id, folder, checkpoint file or a prior instance (returned as is).
    device, dtype
        Where and in which precision to run; default ``"auto"`` and float16 on CUDA, else float32.
    progress
        ``progress(message, fraction)`` is called while downloading and loading.
    config
        For a single checkpoint file only: a local diffusers SD 1.5 folder whose configs and
        tokenizer to use (otherwise the configs of the hub's SD 1.5 are used, from the cache).
    low_memory
        Stable Diffusion only: VAE tiling and the text encoder on the CPU
        (``StableDiffusionPrior.set_low_memory``); for GPUs with 8 GB or less.
    compile
        Stable Diffusion only: ``torch.compile`` the networks (CUDA graphs on CUDA); the first
        solve at each image size compiles (``StableDiffusionPrior.compile``).

    Models are cached per process by (spec, device, dtype); :func:`clear_model_cache` frees them.
    """
    if isinstance(spec, DiffusionPrior):
        return spec
    disable_telemetry()
    if not isinstance(spec, (str, os.PathLike)):
        raise InvalidInputError(f"model must be a name, hub id, path or DiffusionPrior, not {type(spec).__name__}")
    target = resolve_device(device)
    precision = resolve_dtype(dtype, target)
    kind, where = classify_spec(spec)
    config_dir = str(Path(config).expanduser().resolve()) if config is not None else None
    key = (kind, where, str(target), precision, config_dir, bool(low_memory), bool(compile))
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None and cached.device.type == target.type:
            return cached
        prior = _load(kind, where, target, precision, progress, config_dir)
        prior = _apply_speed_options(prior, low_memory, compile)
        _CACHE[key] = prior
        return prior


def _apply_speed_options(prior: DiffusionPrior, low_memory: bool, compile: bool) -> DiffusionPrior:
    """Low-memory mode and torch.compile, for priors that support them (Stable Diffusion)."""
    for flag, method in ((low_memory, "set_low_memory"), (compile, "compile")):
        if flag:
            if not callable(getattr(prior, method, None)):
                raise InvalidInputError(f"{method.replace('set_', '')} is not available for the {prior.name} model")
            getattr(prior, method)()
    return prior


def release_model(prior: DiffusionPrior) -> None:
    """Drop one model from the cache and free its memory; other cached models stay."""
    with _LOCK:
        for key in [key for key, cached in _CACHE.items() if cached is prior]:
            del _CACHE[key]
    prior.release()


def clear_model_cache() -> None:
    """Release every cached model (frees GPU memory) and empty the cache."""
    with _LOCK:
        priors = list(_CACHE.values())
        _CACHE.clear()
    for prior in priors:
        prior.release()


def download_model(
    spec: str = "sd15", dtype: str | torch.dtype | None = "float16", progress: Progress | None = None
) -> list[Path]:
    """Fetch a hub model and the CLIP image tower into the Hugging Face cache, without loading them.

    Run this once with internet access to use the model offline later. float16 fetches the
    half-size fp16 weights (used for every dtype when nothing else is cached).
    """
    disable_telemetry()
    kind, where = classify_spec(spec)
    if kind != "hub":
        raise InvalidInputError(f"only hub models can be downloaded; {spec!r} is a {kind} model")
    if where == CLIP_IMAGE_REPO:
        return [fetch_image_tower(progress)]
    precision = resolve_dtype(dtype, torch.device("cuda"))
    return [fetch_pipeline(where, precision, progress), fetch_image_tower(progress)]


def classify_spec(spec: str | os.PathLike) -> tuple[str, str]:
    """``(kind, where)``: kind is hub, folder, file, tiny or analytic."""
    text = os.fspath(spec).strip()
    if text.lower() == "sd15":
        return "hub", SD15_REPO
    if text.lower() in ("tiny", "analytic"):
        return text.lower(), text.lower()
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder", str(path.resolve())
    if path.is_file():
        return "file", str(path.resolve())
    if _looks_like_path(text):  # realpath: resolve() raises on a symlink loop
        problem = "is a broken symbolic link or a symlink loop" if path.is_symlink() else "does not exist"
        raise ModelNotFoundError(f"model path {text!r} {problem} (looked for {os.path.realpath(path)})")
    if _HUB_ID.fullmatch(text):
        return "hub", text
    raise UnknownModelError(
        f"unknown model {text!r}: give one of {', '.join(MODEL_NAMES)}, a hub id like 'owner/name', "
        "a local diffusers folder or a .safetensors / .ckpt file"
    )


def _looks_like_path(text: str) -> bool:
    return (
        text.lower().endswith(CHECKPOINT_SUFFIXES)
        or text.startswith((".", "~", "/", "\\"))
        or "\\" in text
        or text.count("/") > 1
        or bool(Path(text).drive)
    )


def _load(
    kind: str, where: str, device: torch.device, dtype: torch.dtype, progress: Progress | None, config: str | None
) -> DiffusionPrior:
    if kind == "tiny":
        from napari_treg.models.tiny import build_tiny_prior

        if progress is not None:
            progress("building the tiny model", None)
        return build_tiny_prior().to(device, dtype)
    if kind == "analytic":
        if progress is not None:
            progress("building the analytic prior", None)
        return _load_analytic(device, dtype)
    if kind == "hub":
        folder = fetch_pipeline(where, dtype, progress)
        label = f"Stable Diffusion ({where}) from the cache"
        return load_pipeline_folder(folder, device, dtype, name=where, progress=progress, label=label)
    if kind == "folder":
        return load_pipeline_folder(Path(where), device, dtype, name=where, progress=progress)
    return load_checkpoint_file(Path(where), device, dtype, config=config, progress=progress)


def _load_analytic(device: torch.device, dtype: torch.dtype) -> DiffusionPrior:
    try:
        from napari_treg.models.analytic import AnalyticPrior
    except ImportError as error:
        raise ModelNotFoundError(f"the analytic prior is not available in this installation ({error})") from error
    return AnalyticPrior(device=device, dtype=dtype)


def warn_if_slow(prior: DiffusionPrior) -> None:
    """A real model on the CPU takes hours: say so."""
    if prior.device.type == "cpu" and not prior.is_test_model:
        warnings.warn(
            f"{prior.name} runs on the CPU: expect many seconds per step (minutes to hours per image); "
            "a CUDA GPU or Apple-silicon (mps) device is strongly recommended",
            stacklevel=3,
        )
