"""What the model tests share (``tests/test_models_*.py``): an empty temporary
Hugging Face cache, a fresh model cache per test, and writing the tiny model as a diffusers folder.

Nothing here touches the real Hugging Face hub or cache: ``hf_home`` points HF_HOME into tmp_path,
and "hub" models are faked by planting tiny random-weight snapshots in that temporary cache.

Not a test module (pytest collects ``test_*.py`` only); the tests import it as ``models_helpers``:
pytest's default ("prepend") import mode puts ``tests/``, which has no ``__init__.py``, on ``sys.path``.
The fixtures are not in ``conftest.py`` so that they, the autouse one above all, reach only the test
modules that name them: a fixture function bound to a name in a test module is registered for that
module alone, e.g. ``fresh_model_cache = models_helpers.fresh_model_cache``. (Assigned, not imported
by ``from ... import``: ruff would flag the import as unused and every test argument as a redefinition.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from napari_treg.models import StableDiffusionPrior, clear_model_cache


@pytest.fixture(autouse=True)
def fresh_model_cache():
    """Each test starts and ends with an empty model cache (autouse in every test module that binds it)."""
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty, temporary Hugging Face cache in offline mode."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def save_tiny_pipeline(folder: Path, prior: StableDiffusionPrior, *, variant=None, image_encoder=True) -> Path:
    """Write the tiny model in the diffusers folder layout of an SD 1.5 repo."""
    prior.unet.save_pretrained(folder / "unet", variant=variant)
    prior.vae.save_pretrained(folder / "vae", variant=variant)
    prior.text_encoder.save_pretrained(folder / "text_encoder", variant=variant)
    prior.tokenizer.save_pretrained(folder / "tokenizer")
    if image_encoder:
        prior.image_encoder.save_pretrained(folder / "image_encoder")
    scheduler = {
        "_class_name": "PNDMScheduler",
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
    }
    (folder / "scheduler").mkdir(parents=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two modules hold the same parameter names and exactly equal values."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
