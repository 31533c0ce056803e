"""Hub models (models/hub.py), faked in a temporary Hugging Face cache: offline and unreachable-hub
errors that say what to do, loading SD 1.5 from a complete cache, what a download fetches, its progress.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import models_helpers
import pytest
import torch
from models_helpers import same_weights, save_tiny_pipeline

from napari_treg.errors import ModelNotFoundError
from napari_treg.models import CLIP_IMAGE_REPO, SD15_REPO, StableDiffusionPrior, hub, load_model

FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"

# shared fixtures (tests/models_helpers.py): binding one here registers it for this module
hf_home = models_helpers.hf_home
fresh_model_cache = models_helpers.fresh_model_cache


@pytest.fixture
def unreachable_hub(hf_home, monkeypatch) -> str:
    """Offline mode off, the hub endpoint a closed local port (connection refused at once)."""
    import huggingface_hub.constants as hub_constants

    endpoint = "http://127.0.0.1:9"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(hub_constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return endpoint


def save_tiny_clip(folder: Path, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)) -> Path:
    """A tiny full CLIPModel checkpoint laid out like openai/clip-vit-large-patch14."""
    from transformers import CLIPConfig, CLIPModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        clip = CLIPModel(
            CLIPConfig(
                text_config=dict(
                    vocab_size=514,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=4,
                    max_position_embeddings=77,
                    bos_token_id=512,
                    eos_token_id=513,
                    pad_token_id=513,
                ),
                vision_config=dict(
                    image_size=32,
                    patch_size=8,
                    hidden_size=32,
                    intermediate_size=64,
                    num_hidden_layers=1,
                    num_attention_heads=4,
                ),
                projection_dim=32,
            )
        )
    clip.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": list(mean), "image_std": list(std)}))
    return folder


def use_vocab_and_merges(tokenizer_folder: Path, prior: StableDiffusionPrior) -> None:
    """Replace tokenizer.json by vocab.json + merges.txt, the files the SD 1.5 repo ships."""
    (tokenizer_folder / "tokenizer.json").unlink()
    (tokenizer_folder / "vocab.json").write_text(json.dumps(prior.tokenizer.get_vocab()))
    (tokenizer_folder / "merges.txt").write_text("#version: 0.2\n")


def plant_snapshot(hf_home: Path, repo_id: str) -> Path:
    """An empty snapshot folder in the hub cache layout, with refs/main pointing at it."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(FAKE_SHA)
    snapshot = repo / "snapshots" / FAKE_SHA
    snapshot.mkdir(parents=True)
    return snapshot


def test_sd15_offline_fails_fast_and_says_how_to_get_it(hf_home):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        load_model("sd15", device="cpu")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert SD15_REPO in message and "HF_HUB_OFFLINE" in message
    assert "download_model" in message and "hf download" in message and "local diffusers folder" in message


def test_unreachable_hub_fails_fast(unreachable_hub):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        load_model("sd15", device="cpu")
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "cannot be reached" in message and unreachable_hub in message and SD15_REPO in message


def test_unknown_hub_id_offline_names_it(hf_home):
    with pytest.raises(ModelNotFoundError, match="someone/not-a-model"):
        load_model("someone/not-a-model", device="cpu")


def test_sd15_loads_offline_from_a_complete_cache(hf_home, tiny):
    snapshot = save_tiny_pipeline(plant_snapshot(hf_home, SD15_REPO), tiny, variant="fp16", image_encoder=False)
    use_vocab_and_merges(snapshot / "tokenizer", tiny)
    save_tiny_clip(plant_snapshot(hf_home, CLIP_IMAGE_REPO))
    messages = []
    prior = load_model("sd15", device="cpu", progress=lambda message, fraction: messages.append(message))
    assert isinstance(prior, StableDiffusionPrior) and prior.name == SD15_REPO and not prior.is_test_model
    assert same_weights(prior.unet, tiny.unet) and same_weights(prior.text_encoder, tiny.text_encoder)
    assert prior.image_mean == (0.5, 0.5, 0.5) and prior.image_std == (0.25, 0.25, 0.25)
    assert prior.image_size == 32
    assert torch.equal(prior.embed_text(["a cat"]), tiny.embed_text(["a cat"]))
    assert prior.embed_image(torch.zeros(1, 3, 64, 64)).shape == (1, 32)
    assert any("UNet" in m for m in messages) and any("CLIP" in m for m in messages)
    assert load_model(SD15_REPO, device="cpu") is prior  # same cache entry as "sd15"


def test_download_fetches_only_what_the_hub_has(hf_home, monkeypatch):
    """With the hub reachable (faked), the fp16 weights are preferred, else the full ones."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    full = hub.pipeline_files(None)
    siblings = [SimpleNamespace(rfilename=name) for name in (*full.required, "v1-5-pruned.ckpt")]
    monkeypatch.setattr(hub, "_probe", lambda repo_id, settings, what: SimpleNamespace(siblings=siblings))
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        if kwargs.get("local_files_only"):
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        calls.append(kwargs)
        return str(hf_home / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    folder = hub.fetch_pipeline(SD15_REPO, torch.float16, lambda message, fraction: None)
    assert folder == hf_home / "snapshot" and len(calls) == 1
    patterns = calls[0]["allow_patterns"]
    assert "unet/diffusion_pytorch_model.safetensors" in patterns
    assert not any("fp16" in p or "ckpt" in p or "safety" in p for p in patterns)
    assert "revision" not in calls[0]  # on the default branch, so refs/main is written for offline use
    assert calls[0]["tqdm_class"] is not None


def test_progress_is_forwarded_from_the_download_bars():
    seen = []
    bar = hub._progress_bar_class(lambda message, fraction: seen.append((message, fraction)), "repo/x")
    with bar(total=10, desc="Fetching 10 files", name="ignored") as progress_bar:
        progress_bar.update(5)
        progress_bar.refresh()
    assert any("repo/x" in m and "Fetching" in m for m, _ in seen)
    assert any(f == pytest.approx(0.5) for _, f in seen) and seen[-1][1] == pytest.approx(0.5)
