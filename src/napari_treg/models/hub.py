"""The Hugging Face hub: fetching Stable Diffusion repos and the CLIP image tower into its cache.

Only the files TReg needs are fetched (no safety checker, no ``.ckpt``); a repo that is
already cached is used without contacting the hub, which is never waited on for longer
than :data:`HUB_TIMEOUT_S`. Every failure raises
:class:`~napari_treg.errors.ModelNotFoundError` saying what is missing and how to get it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from napari_treg.errors import ModelNotFoundError

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP_IMAGE_REPO = "openai/clip-vit-large-patch14"
HUB_TIMEOUT_S = 10.0

#: progress(message, fraction); fraction in [0, 1] or None when unknown
Progress = Callable[[str, "float | None"], None]


def disable_telemetry() -> None:
    """Turn off Hugging Face / diffusers / transformers usage telemetry for this process.

    Sets ``HF_HUB_DISABLE_TELEMETRY`` and ``DISABLE_TELEMETRY`` and the flags that the
    libraries already read at import (diffusers copies huggingface_hub's at import).
    """
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DISABLE_TELEMETRY"] = "1"
    for module in ("huggingface_hub.constants", "diffusers.utils.hub_utils", "diffusers.utils.constants"):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, "HF_HUB_DISABLE_TELEMETRY"):
            loaded.HF_HUB_DISABLE_TELEMETRY = True


@dataclass(frozen=True)
class _Hub:
    """Hub settings read from the environment at call time (huggingface_hub reads them at import)."""

    offline: bool
    endpoint: str
    cache_dir: str

    @classmethod
    def from_env(cls) -> _Hub:
        from huggingface_hub import constants

        flag = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE"))
        offline = _is_true(flag) if flag is not None else bool(constants.HF_HUB_OFFLINE)
        endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
        if os.environ.get("HF_HUB_CACHE"):
            cache = os.environ["HF_HUB_CACHE"]
        elif os.environ.get("HF_HOME"):
            cache = os.path.join(os.environ["HF_HOME"], "hub")
        else:
            cache = constants.HF_HUB_CACHE
        return cls(offline, endpoint, os.path.expanduser(cache))


def _is_true(value: str | None) -> bool:
    return value is not None and value.strip().upper() in {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class _Files:
    """One way to fetch a repo: the download patterns and the files that must then exist."""

    patterns: tuple[str, ...]
    required: tuple[str, ...]


def pipeline_files(variant: str | None) -> _Files:
    """The files of a diffusers SD repo that TReg needs (no safety checker, no .ckpt)."""
    dot = f".{variant}" if variant else ""
    weights = (
        f"unet/diffusion_pytorch_model{dot}.safetensors",
        f"vae/diffusion_pytorch_model{dot}.safetensors",
        f"text_encoder/model{dot}.safetensors",
    )
    configs = ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")
    tokenizer = ("tokenizer/vocab.json", "tokenizer/merges.txt")
    patterns = (*configs, "scheduler/scheduler_config.json", "tokenizer/*.json", "tokenizer/*.txt", *weights)
    return _Files(patterns, (*configs, *tokenizer, *weights))


CONFIG_FILES = _Files(
    ("model_index.json", "*/config.json", "scheduler/scheduler_config.json", "tokenizer/*.json", "tokenizer/*.txt"),
    ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer/vocab.json"),
)
IMAGE_TOWER_FILES = _Files(
    ("config.json", "preprocessor_config.json", "model.safetensors"), ("config.json", "model.safetensors")
)


def fetch_pipeline(repo_id: str, dtype: torch.dtype, progress: Progress | None = None) -> Path:
    """Local snapshot folder of a diffusers SD repo; fp16 weights first when ``dtype`` is float16."""
    variants = ["fp16", None] if dtype == torch.float16 else [None, "fp16"]
    return fetch_from_hub(repo_id, [pipeline_files(v) for v in variants], progress, what="Stable Diffusion weights")


def fetch_image_tower(progress: Progress | None = None) -> Path:
    """Local snapshot folder of the CLIP ViT-L/14 image tower used for adaptive negation."""
    return fetch_from_hub(CLIP_IMAGE_REPO, [IMAGE_TOWER_FILES], progress, what="the CLIP image model")


def fetch_from_hub(repo_id: str, options: list[_Files], progress: Progress | None, what: str) -> Path:
    """The cached snapshot of ``repo_id`` if complete for one option, else download the first available one."""
    hub = _Hub.from_env()
    for files in options:
        folder = _cached_snapshot(repo_id, files, hub)
        if folder is not None:
            return folder
    if hub.offline:
        raise ModelNotFoundError(_missing_message(repo_id, what, hub, "offline mode is on (HF_HUB_OFFLINE=1)"))
    info = _probe(repo_id, hub, what)
    available = {sibling.rfilename for sibling in info.siblings or []}
    for files in options:
        if set(files.required) <= available:
            return _download(repo_id, files, hub, progress, what)
    needed = ", ".join(options[0].required)
    raise ModelNotFoundError(
        f"hub repo {repo_id!r} does not hold what TReg needs ({needed}): it is not a diffusers-format "
        f"Stable Diffusion 1.x repo with safetensors weights; try 'sd15' ({SD15_REPO})"
    )


def _cached_snapshot(repo_id: str, files: _Files, hub: _Hub) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id, cache_dir=hub.cache_dir, allow_patterns=list(files.patterns), local_files_only=True
            )
        )
    except Exception:  # not cached, or incomplete: the caller decides what to do
        return None
    return folder if all((folder / name).is_file() for name in files.required) else None


def _probe(repo_id: str, hub: _Hub, what: str) -> Any:
    """Repo info within ``HUB_TIMEOUT_S`` seconds, or a ModelNotFoundError saying why not."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        return HfApi(endpoint=hub.endpoint).repo_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError as error:
        raise ModelNotFoundError(
            f"hub repo {repo_id!r} is gated: accept its licence on the hub, then log in (`hf auth login`)"
        ) from error
    except RepositoryNotFoundError as error:
        hint = f"; for Stable Diffusion 1.5 use 'sd15' ({SD15_REPO})" if repo_id != SD15_REPO else ""
        raise ModelNotFoundError(f"no hub repo {repo_id!r} (and no local folder of that name){hint}") from error
    except OfflineModeIsEnabled as error:
        reason = "offline mode is on (HF_HUB_OFFLINE=1)"
        raise ModelNotFoundError(_missing_message(repo_id, what, hub, reason)) from error
    except HfHubHTTPError as error:
        raise ModelNotFoundError(_missing_message(repo_id, what, hub, f"the hub answered: {error}")) from error
    except Exception as error:  # connection refused, DNS, timeouts, proxies: the hub is unreachable
        reason = f"the hub at {hub.endpoint} cannot be reached ({type(error).__name__}: {error})"
        raise ModelNotFoundError(_missing_message(repo_id, what, hub, reason)) from error


def _download(repo_id: str, files: _Files, hub: _Hub, progress: Progress | None, what: str) -> Path:
    """Download into the cache; on the default branch, so the cache records it for offline use."""
    from huggingface_hub import snapshot_download

    tqdm_class = _progress_bar_class(progress, repo_id) if progress is not None else None
    try:
        folder = snapshot_download(
            repo_id,
            cache_dir=hub.cache_dir,
            endpoint=hub.endpoint,
            allow_patterns=list(files.patterns),
            etag_timeout=HUB_TIMEOUT_S,
            tqdm_class=tqdm_class,
        )
    except Exception as error:
        raise ModelNotFoundError(_missing_message(repo_id, what, hub, f"the download failed: {error}")) from error
    return Path(folder)


def _missing_message(repo_id: str, what: str, hub: _Hub, reason: str) -> str:
    patterns = " ".join(f'--include "{p}"' for p in _cli_patterns(repo_id))
    return (
        f"{what} ({repo_id}): not in the Hugging Face cache ({hub.cache_dir}) and cannot be downloaded, "
        f"{reason}.\nTo get them, run once with internet access:\n"
        f"    python -c \"from napari_treg.models import download_model; download_model('{repo_id}')\"\n"
        f"or  hf download {repo_id} {patterns}\n"
        "or pass a local diffusers folder or a .safetensors checkpoint file as the model."
    )


def _cli_patterns(repo_id: str) -> tuple[str, ...]:
    if repo_id == CLIP_IMAGE_REPO:
        return IMAGE_TOWER_FILES.patterns
    return ("*.json", "*.txt", "unet/*.fp16.safetensors", "vae/*.fp16.safetensors", "text_encoder/*.fp16.safetensors")


def _progress_bar_class(progress: Progress, label: str) -> type:
    """A tqdm class that draws nothing and forwards ``(message, fraction)`` to ``progress``."""
    import io

    from tqdm import tqdm

    class ForwardingBar(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["file"] = io.StringIO()
            super().__init__(*args, **kwargs)

        def display(self, msg: Any = None, pos: Any = None) -> bool:
            total = self.total or 0
            fraction = min(self.n / total, 1.0) if total > 0 else None
            progress(f"{label}: {self.desc or 'downloading'}", fraction)
            return True

    return ForwardingBar
