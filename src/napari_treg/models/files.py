"""Local model files: diffusers folders and single SD 1.x checkpoint files, plus the CLIP image tower.

Weights that do not fit their config are refused rather than re-initialised. Pickled
checkpoints are only read with ``torch.load(weights_only=True)``, so no code stored in
them ever runs.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import torch

from napari_treg.errors import ModelNotFoundError
from napari_treg.models.base import DiffusionPrior
from napari_treg.models.hub import CONFIG_FILES, SD15_REPO, Progress, fetch_from_hub, fetch_image_tower

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
SD1_TEXT_WIDTH = 768

_WEIGHT_STEMS = {"unet": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model", "text_encoder": "model"}


# -- local diffusers folders ------------------------------------------------------------------


def load_pipeline_folder(
    folder: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    name: str,
    progress: Progress | None = None,
    label: str | None = None,
) -> DiffusionPrior:
    """Build a :class:`StableDiffusionPrior` from a diffusers-format folder (plus a CLIP image tower)."""
    weights = check_pipeline_folder(folder, dtype)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from napari_treg.models.stable_diffusion import StableDiffusionPrior, schedule_from_config

    label = label or name  # what the progress calls it
    _report(progress, part_message(label, 0))
    unet = _from_folder(UNet2DConditionModel, folder, "unet", weights["unet"], torch_dtype=dtype)
    _report(progress, part_message(label, 1))
    vae = _from_folder(AutoencoderKL, folder, "vae", weights["vae"], torch_dtype=dtype)
    _report(progress, part_message(label, 2))
    text_encoder = _load_transformers(
        CLIPTextModel,
        folder,
        "the text encoder",
        subfolder="text_encoder",
        dtype=dtype,
        **_variant(weights["text_encoder"]),
    )
    _report(progress, part_message(label, 3))
    tokenizer = _from_folder(CLIPTokenizer, folder, "tokenizer", None)
    tower, preprocessing = load_image_tower(folder, dtype, progress, what=part_message(label, 4))
    prior = StableDiffusionPrior(
        unet,
        vae,
        text_encoder,
        tokenizer,
        tower,
        schedule=schedule_from_config(_read_json(folder / "scheduler" / "scheduler_config.json")),
        name=name,
        **preprocessing,
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


#: the parts of a Stable Diffusion pipeline folder, in the order they are loaded (the progress says "k of 5")
PIPELINE_PARTS = ("UNet", "VAE", "text encoder", "tokenizer", "CLIP image model")


def part_message(name: str, index: int) -> str:
    """E.g. "loading runwayml/stable-diffusion-v1-5 (3 of 5 parts: text encoder)"."""
    return f"loading {name} ({index + 1} of {len(PIPELINE_PARTS)} parts: {PIPELINE_PARTS[index]})"


def load_image_tower(
    folder: Path | None,
    dtype: torch.dtype,
    progress: Progress | None = None,
    what: str = "loading the CLIP image model",
) -> tuple[Any, dict[str, Any]]:
    """CLIP image tower with projection and its preprocessing (image_size, image_mean, image_std).

    From ``folder/image_encoder`` when present, else CLIP ViT-L/14 from the hub (or its cache).
    """
    from transformers import CLIPVisionModelWithProjection

    source = folder / "image_encoder" if folder is not None else None
    if source is None or not (source / "config.json").is_file():
        source = fetch_image_tower(progress)
    _report(progress, what)
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

    from napari_treg.models.stable_diffusion import StableDiffusionPrior, schedule_from_config

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
        pipe.unet,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        tower,
        schedule=schedule_from_config(dict(pipe.scheduler.config)),
        name=str(path),
        **preprocessing,
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
