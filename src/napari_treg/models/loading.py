"""Choosing, fetching and loading diffusion priors: :func:`load_model`.

A model spec is one of

- ``"sd15"``: Stable Diffusion 1.5 from the Hugging Face hub (or its local cache),
- a hub id ``"owner/name"`` of a diffusers-format SD 1.x repository,
- a local diffusers folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``),
- a single ``.safetensors`` (preferred) or ``.ckpt`` checkpoint file,
- ``"tiny"`` (random-weight test model) or ``"analytic"`` (closed-form test prior),
- a :class:`DiffusionPrior` instance, returned as is.

Hub downloads fetch only the files TReg needs and go to the Hugging Face cache;
a model that is already cached is used without contacting the hub. Every failure
raises :class:`~napari_treg.errors.ModelNotFoundError` saying what is missing and
how to get it. Pickled checkpoints are only read with ``torch.load(weights_only=True)``,
so no code stored in them ever runs.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import InvalidInputError, ModelNotFoundError
from .base import DiffusionPrior

SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP_IMAGE_REPO = "openai/clip-vit-large-patch14"
MODEL_NAMES = ("sd15", "tiny", "analytic")
VALID_DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
HUB_TIMEOUT_S = 10.0
SD1_TEXT_WIDTH = 768

#: progress(message, fraction); fraction in [0, 1] or None when unknown
Progress = Callable[[str, "float | None"], None]

_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}
_CACHE: dict[tuple, DiffusionPrior] = {}
_LOCK = threading.RLock()


# -- devices and dtypes -----------------------------------------------------------------------


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (cuda, then mps, then cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` -> a device."""
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", text):
        return _checked_cuda(text)
    if text == "mps":
        if not _mps_available():
            raise InvalidInputError("device 'mps' requested, but Apple MPS is not available here; use 'auto' or 'cpu'")
        return torch.device("mps")
    raise InvalidInputError(f"unknown device {name!r}; valid devices: {', '.join(VALID_DEVICES)}")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """None -> float16 on CUDA, float32 elsewhere; also accepts "fp16", "bfloat16", "float32", ..."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype in set(_DTYPES.values()):
            return dtype
    elif isinstance(dtype, str) and dtype.strip().lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.strip().lower().removeprefix("torch.")]
    raise InvalidInputError(f"unsupported dtype {dtype!r}; use float16 (fp16), bfloat16 or float32")


def _checked_cuda(text: str) -> torch.device:
    if not torch.cuda.is_available():
        raise InvalidInputError(
            f"device {text!r} requested, but CUDA is not available (no GPU or a CPU-only torch build); "
            "use 'auto' or 'cpu'"
        )
    device = torch.device(text)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise InvalidInputError(f"device {text!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


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
    raise ModelNotFoundError(
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
        from .tiny import build_tiny_prior

        return build_tiny_prior().to(device, dtype)
    if kind == "analytic":
        return _load_analytic(device, dtype)
    if kind == "hub":
        folder = fetch_pipeline(where, dtype, progress)
        return load_pipeline_folder(folder, device, dtype, name=where, progress=progress)
    if kind == "folder":
        return load_pipeline_folder(Path(where), device, dtype, name=where, progress=progress)
    return load_checkpoint_file(Path(where), device, dtype, config=config, progress=progress)


def _load_analytic(device: torch.device, dtype: torch.dtype) -> DiffusionPrior:
    try:
        from .analytic import AnalyticPrior
    except ImportError as error:
        raise ModelNotFoundError(f"the analytic prior is not available in this installation ({error})") from error
    return AnalyticPrior(device=device, dtype=dtype)


# -- the Hugging Face hub ---------------------------------------------------------------------


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
        folder = snapshot_download(
            repo_id, cache_dir=hub.cache_dir, allow_patterns=list(files.patterns), local_files_only=True
        )
    except Exception:  # not cached, or incomplete: the caller decides what to do
        return None
    folder = Path(folder)
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
        raise ModelNotFoundError(
            f"no hub repo {repo_id!r} (and no local folder of that name){hint}"
        ) from error
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


# -- local diffusers folders ------------------------------------------------------------------


def load_pipeline_folder(
    folder: Path, device: torch.device, dtype: torch.dtype, *, name: str, progress: Progress | None = None
) -> DiffusionPrior:
    """Build a :class:`StableDiffusionPrior` from a diffusers-format folder (plus a CLIP image tower)."""
    weights = check_pipeline_folder(folder, dtype)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .stable_diffusion import StableDiffusionPrior, schedule_from_config

    _report(progress, f"loading {name}: UNet")
    unet = _from_folder(UNet2DConditionModel, folder, "unet", weights["unet"], torch_dtype=dtype)
    _report(progress, f"loading {name}: VAE")
    vae = _from_folder(AutoencoderKL, folder, "vae", weights["vae"], torch_dtype=dtype)
    _report(progress, f"loading {name}: text encoder")
    text_encoder = _load_transformers(
        CLIPTextModel, folder, "the text encoder", subfolder="text_encoder", dtype=dtype,
        **_variant(weights["text_encoder"]),
    )
    tokenizer = _from_folder(CLIPTokenizer, folder, "tokenizer", None)
    tower, preprocessing = load_image_tower(folder, dtype, progress)
    prior = StableDiffusionPrior(
        unet, vae, text_encoder, tokenizer, tower,
        schedule=schedule_from_config(_read_json(folder / "scheduler" / "scheduler_config.json")),
        name=name, **preprocessing,
    )
    return prior.to(device)


def check_pipeline_folder(folder: Path, dtype: torch.dtype) -> dict[str, str | None]:
    """The weights variant (None or "fp16") of each model part; ModelNotFoundError naming any missing part."""
    missing = [] if (folder / "model_index.json").is_file() else ["model_index.json"]
    variants: dict[str, str | None] = {}
    for part, stem in _WEIGHT_STEMS.items():
        found = _weight_variants(folder / part, stem, dtype)
        if found and (folder / part / "config.json").is_file():
            variants[part] = found[0]
        else:
            missing.append(f"{part}/ (config.json and {stem}[.fp16].safetensors)")
    tokenizer = folder / "tokenizer"
    if not (_has_files(tokenizer, "vocab.json", "merges.txt") or _has_files(tokenizer, "tokenizer.json")):
        missing.append("tokenizer/ (vocab.json and merges.txt, or tokenizer.json)")
    if missing:
        raise ModelNotFoundError(
            f"{folder} is not a complete diffusers Stable Diffusion folder; missing: {', '.join(missing)}"
        )
    return variants


def _has_files(folder: Path, *names: str) -> bool:
    return all((folder / name).is_file() for name in names)


def _weight_variants(sub: Path, stem: str, dtype: torch.dtype) -> list[str | None]:
    """Weight variants present in ``sub``, the one that suits ``dtype`` first (fp16 for float16)."""
    order: list[str | None] = ["fp16", None] if dtype == torch.float16 else [None, "fp16"]
    suffixes = (".safetensors", ".bin")
    return [v for v in order if any((sub / f"{stem}{'.' + v if v else ''}{ext}").is_file() for ext in suffixes)]


def _variant(variant: str | None) -> dict[str, str]:
    return {"variant": variant} if variant is not None else {}


def _from_folder(cls: Any, folder: Path, subfolder: str, variant: str | None, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(folder, subfolder=subfolder, local_files_only=True, **_variant(variant), **kwargs)
    except Exception as error:
        raise ModelNotFoundError(f"could not load {subfolder}/ of {folder}: {error}") from error


def _load_transformers(cls: Any, source: Path, what: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` from local files; refuses weights that do not fit the config.

    transformers re-initialises missing or wrongly shaped weights with a mere warning;
    random weights in a prior would be a silent failure, so that is an error here.
    """
    try:
        model, info = cls.from_pretrained(source, local_files_only=True, output_loading_info=True, **kwargs)
    except Exception as error:
        raise ModelNotFoundError(f"could not load {what} from {source}: {error}") from error
    bad = sorted(info.get("missing_keys", [])) + sorted(str(k[0]) for k in info.get("mismatched_keys", []))
    if bad:
        raise ModelNotFoundError(
            f"{what} in {source} does not fit its config: {len(bad)} weight(s) missing or of the wrong "
            f"shape (e.g. {', '.join(bad[:3])})"
        )
    return model


def _vision_config(source: Path) -> Any:
    """The image tower's config; from a full CLIP config, with its top-level projection width."""
    from transformers import CLIPConfig, CLIPVisionConfig

    if _read_json(source / "config.json").get("model_type") != "clip":
        return CLIPVisionConfig.from_pretrained(source, local_files_only=True)
    full = CLIPConfig.from_pretrained(source, local_files_only=True)
    vision = full.vision_config
    vision.projection_dim = full.projection_dim
    return vision


def load_image_tower(
    folder: Path | None, dtype: torch.dtype, progress: Progress | None = None
) -> tuple[Any, dict[str, Any]]:
    """CLIP image tower with projection and its preprocessing (image_size, image_mean, image_std).

    From ``folder/image_encoder`` when present, else CLIP ViT-L/14 from the hub (or its cache).
    """
    from transformers import CLIPVisionModelWithProjection

    source = folder / "image_encoder" if folder is not None else None
    if source is None or not (source / "config.json").is_file():
        source = fetch_image_tower(progress)
    _report(progress, "loading the CLIP image model")
    try:
        config = _vision_config(source)
    except Exception as error:
        raise ModelNotFoundError(f"could not read the CLIP image model config in {source}: {error}") from error
    tower = _load_transformers(
        CLIPVisionModelWithProjection, source, "the CLIP image model", config=config, dtype=dtype
    )
    return tower, _clip_preprocessing(source, folder, tower)


def _clip_preprocessing(source: Path, folder: Path | None, tower: Any) -> dict[str, Any]:
    """Mean and std from the image processor config, when there is one; size from the tower."""
    candidates = [source / "preprocessor_config.json"]
    if folder is not None:
        candidates.append(folder / "feature_extractor" / "preprocessor_config.json")
    settings: dict[str, Any] = {"image_size": int(tower.config.image_size)}
    for path in candidates:
        data = _read_json(path)
        if "image_mean" in data and "image_std" in data:
            settings.update(image_mean=data["image_mean"], image_std=data["image_std"])
            break
    return settings


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _report(progress: Progress | None, message: str, fraction: float | None = None) -> None:
    if progress is not None:
        progress(message, fraction)


# -- single checkpoint files ------------------------------------------------------------------


def load_checkpoint_file(
    path: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    config: str | None = None,
    progress: Progress | None = None,
) -> DiffusionPrior:
    """SD 1.x from one original-layout checkpoint (``.safetensors`` or a weights-only ``.ckpt``)."""
    check_checkpoint_file(path)
    config_folder = Path(config) if config is not None else _fetch_sd15_configs(progress)
    _check_config_folder(config_folder)
    from diffusers import StableDiffusionPipeline

    from .stable_diffusion import StableDiffusionPrior, schedule_from_config

    _report(progress, f"loading {path.name}")
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_folder),
            local_files_only=True,
            torch_dtype=dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except Exception as error:
        raise ModelNotFoundError(f"could not build Stable Diffusion from {path}: {error}") from error
    tower, preprocessing = load_image_tower(None, dtype, progress)
    prior = StableDiffusionPrior(
        pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, tower,
        schedule=schedule_from_config(dict(pipe.scheduler.config)),
        name=str(path), **preprocessing,
    )
    return prior.to(device)


def check_checkpoint_file(path: Path) -> None:
    """Refuse anything but an SD 1.x checkpoint, without running code from the file."""
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ModelNotFoundError(
            f"{path} is not a model file: use a diffusers folder, a .safetensors (preferred) or a .ckpt file"
        )
    shapes = _safetensors_shapes(path) if suffix == ".safetensors" else _pickle_shapes(path)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if key not in shapes:
        raise ModelNotFoundError(
            f"{path} holds tensors but is not a Stable Diffusion 1.x checkpoint (no {key!r}); "
            "SDXL, SD 2.x and diffusers-format weight files are not single-file SD 1.x models"
        )
    width = shapes[key][-1]
    if width != SD1_TEXT_WIDTH:
        raise ModelNotFoundError(
            f"{path} has text width {width}, not {SD1_TEXT_WIDTH}: only Stable Diffusion 1.x checkpoints are supported"
        )


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as error:
        raise ModelNotFoundError(f"{path} is not a readable safetensors file: {error}") from error


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of a pickled checkpoint, read with ``weights_only=True`` (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as error:
        raise ModelNotFoundError(
            f"refused to load {path}: it is not a plain weights checkpoint ({type(error).__name__}). "
            "Pickled files are read with torch.load(weights_only=True), so code or objects stored in them "
            "are never run; convert the file to .safetensors or use a trusted diffusers folder"
        ) from error
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelNotFoundError(f"{path} holds a {type(state).__name__}, not a checkpoint dictionary")
    return {key: tuple(value.shape) for key, value in state.items() if isinstance(value, torch.Tensor)}


def _fetch_sd15_configs(progress: Progress | None) -> Path:
    """The SD 1.5 component configs and tokenizer (a few kB) that a single checkpoint lacks."""
    try:
        return fetch_from_hub(SD15_REPO, [CONFIG_FILES], progress, what="the Stable Diffusion 1.5 config files")
    except ModelNotFoundError as error:
        raise ModelNotFoundError(
            f"{error}\nA single checkpoint file needs these configs; alternatively pass "
            "config=<a local diffusers SD 1.5 folder>."
        ) from error


def _check_config_folder(folder: Path) -> None:
    missing = [name for name in CONFIG_FILES.required if not (folder / name).is_file()]
    if missing:
        raise ModelNotFoundError(f"config folder {folder} lacks {', '.join(missing)} (a diffusers SD 1.5 folder)")
