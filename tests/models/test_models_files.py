"""Local diffusers folders and single checkpoint files (models/files.py): loading offline, missing parts
named, never unpickling code, refusing files that are not SD 1.x checkpoints, config folders.
"""

from __future__ import annotations

import pickle
import shutil
import time
from pathlib import Path

import models_helpers
import pytest
import torch
from models_helpers import same_weights, save_tiny_pipeline

from napari_treg.errors import ModelNotFoundError
from napari_treg.models import CLIP_IMAGE_REPO, SD15_REPO, StableDiffusionPrior, load_model

SD_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"

# shared fixtures (tests/models_helpers.py): binding one here registers it for this module
hf_home = models_helpers.hf_home
fresh_model_cache = models_helpers.fresh_model_cache


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"), tiny)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_local_folder_loads_offline(hf_home, tiny, tiny_folder):
    prior = load_model(str(tiny_folder), device="cpu")
    assert isinstance(prior, StableDiffusionPrior) and prior.name == str(tiny_folder.resolve())
    for a, b in zip(tiny._modules(), prior._modules()):
        assert same_weights(a, b)
    assert torch.equal(prior.embed_text(["x"]), tiny.embed_text(["x"]))


@pytest.mark.parametrize("part", ["unet", "vae", "text_encoder", "tokenizer", "model_index.json"])
def test_local_folder_missing_part_is_named(hf_home, tiny_folder, tmp_path, part):
    folder = _copy(tiny_folder, tmp_path)
    target = folder / part
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ModelNotFoundError, match=part.replace(".", r"\.")):
        load_model(folder, device="cpu")


def test_local_folder_without_image_tower_needs_clip(hf_home, tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path)
    shutil.rmtree(folder / "image_encoder")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match=CLIP_IMAGE_REPO):
        load_model(folder, device="cpu")
    assert time.perf_counter() - start < 10


class _Payload:
    """Unpickling this runs ``open(marker, "w")``: creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("suffix", [".ckpt", ".bin", ".pt"])
def test_malicious_pickle_is_never_executed(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil{suffix}"
    torch.save({"state_dict": {SD_KEY: torch.zeros(320, 768), "x": _Payload(marker)}}, path)
    with pytest.raises(ModelNotFoundError, match="weights_only"):
        load_model(path, device="cpu")
    assert not marker.exists()
    # control: the payload is live, an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_plain_pickle_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "legacy.ckpt"
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(ModelNotFoundError):
        load_model(path, device="cpu")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["weights.safetensors", "weights.ckpt", "notes.txt"])
def test_random_file_is_not_a_model(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(ModelNotFoundError, match="not"):
        load_model(path, device="cpu")


def _safetensors(path: Path, tensors: dict) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(path))
    return path


def test_safetensors_that_is_not_sd1_is_refused(tmp_path):
    with pytest.raises(ModelNotFoundError, match="not a Stable Diffusion 1.x"):
        load_model(_safetensors(tmp_path / "a.safetensors", {"a": torch.zeros(2)}), device="cpu")
    with pytest.raises(ModelNotFoundError, match="1024"):
        load_model(_safetensors(tmp_path / "sd2.safetensors", {SD_KEY: torch.zeros(320, 1024)}), device="cpu")


def test_single_file_offline_without_configs_fails_fast(hf_home, tmp_path):
    path = _safetensors(tmp_path / "sd.safetensors", {SD_KEY: torch.zeros(320, 768)})
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        load_model(path, device="cpu")
    assert time.perf_counter() - start < 10
    assert SD15_REPO in str(info.value) and "config=" in str(info.value)


def test_single_file_with_incomplete_config_folder(tmp_path):
    path = _safetensors(tmp_path / "sd.safetensors", {SD_KEY: torch.zeros(320, 768)})
    (tmp_path / "configs").mkdir()
    with pytest.raises(ModelNotFoundError, match="model_index.json"):
        load_model(path, device="cpu", config=tmp_path / "configs")
