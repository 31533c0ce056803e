"""Stable Diffusion 1.5 at full size with random weights, built from its configs in code (no download).

Compute cost does not depend on weight values, so these give honest GPU timings and memory.
Shared by the GPU benchmarks; also: ``timed`` (synchronised wall time) and ``write_json``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout without installing

# SD 1.5 (runwayml / stable-diffusion-v1-5) unet/config.json and vae/config.json
UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    sample_size=512,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    scaling_factor=0.18215,
)
# CLIP ViT-L/14 (openai/clip-vit-large-patch14): text tower (SD 1.5's text encoder) and image tower
TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)


def build_sd15_prior(device: str | torch.device = "cuda", dtype: torch.dtype = torch.float16, seed: int = 0):
    """A :class:`StableDiffusionPrior` with SD 1.5's architecture and random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    from napari_treg.models.stable_diffusion import StableDiffusionPrior
    from napari_treg.models.tiny import BOS, EOS, byte_level_tokenizer

    tokenizer = byte_level_tokenizer()  # ids < 514, inside SD's 49408-token vocabulary
    vocab = tokenizer.get_vocab()
    torch.manual_seed(seed)
    device = torch.device(device)
    with torch.device(device):  # initialise on the device: seconds instead of a minute on the CPU
        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        text = CLIPTextModel(
            CLIPTextConfig(**TEXT, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS])
        )
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION))
    prior = StableDiffusionPrior(
        unet, vae, text, tokenizer, vision, name="sd15 architecture, random weights", is_test_model=True
    )
    return prior.to(device, dtype)


def instrument(prior) -> dict:
    """Wrap the prior's model methods; returns {name: [count, host seconds]}, filled in as they run (adds no sync)."""
    stats: dict = defaultdict(lambda: [0, 0.0])
    for name in ("predict_noise", "decode", "encode", "embed_image", "embed_text"):
        original = getattr(prior, name)

        def wrapper(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                entry = stats[_name]
                entry[0] += 1
                entry[1] += time.perf_counter() - start

        setattr(prior, name, wrapper)
    return stats


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, reps: int = 1, warm: int = 0) -> tuple[float, object]:
    """Median synchronised wall time of ``fn()`` over ``reps`` runs after ``warm`` runs; and its last result."""
    result = None
    for _ in range(warm):
        result = fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None


def peak_reserved_gib() -> float | None:
    """Peak memory the caching allocator held, CUDA-graph pools included."""
    return round(torch.cuda.max_memory_reserved() / 2**30, 3) if torch.cuda.is_available() else None


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def environment() -> dict:
    import platform

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import diffusers
        import transformers

        info.update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    info["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def write_json(name: str, data: dict, echo: bool = True) -> None:
    """Print ``data`` (unless ``echo`` is False) and write it to ``$OUT/<name>.json`` when ``OUT`` is set.

    Scripts that a time limit may stop call it with ``echo=False`` after each part, so the parts
    measured so far are on disk.
    """
    text = json.dumps(data, indent=1, default=str)
    if echo:
        print(text)
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{name}.json").write_text(text)


def table(rows: list[tuple[str, object]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
