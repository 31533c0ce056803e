"""Model priors and loading: the tiny offline model, device/dtype choice, caching, every error path.

Nothing here touches the real Hugging Face hub or cache: HF_HOME points into tmp_path, and
"hub" models are faked by planting tiny random-weight snapshots in that temporary cache.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from napari_treg.errors import InvalidInputError, ModelNotFoundError
from napari_treg.models import (
    CLIP_IMAGE_REPO,
    SD15_REPO,
    NoiseSchedule,
    StableDiffusionPrior,
    build_tiny_prior,
    clear_model_cache,
    download_model,
    hub,
    load_model,
    resolve_device,
    resolve_dtype,
)
from napari_treg.models.stable_diffusion import schedule_from_config

SD_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
FAKE_SHA = "0123456789abcdef0123456789abcdef01234567"


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> StableDiffusionPrior:
    return build_tiny_prior()


@pytest.fixture(autouse=True)
def _fresh_model_cache():
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


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tiny) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny_sd"), tiny)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# -- the tiny model -------------------------------------------------------------------------


def test_tiny_shapes_and_dtypes(tiny):
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = tiny.encode(x)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    assert tiny.decode(z).shape == (2, 3, 64, 64)
    text = tiny.embed_text(["a photo of a cat", ""])
    assert text.shape == (2, 77, 32) and text.dtype == torch.float32
    eps = tiny.predict_noise(z, 500, text)
    assert eps.shape == z.shape and eps.dtype == torch.float32
    assert tiny.predict_noise(z, 500, text[:1]).shape == z.shape  # one text row for the batch
    image = tiny.embed_image(x)
    assert image.shape == (2, 32) and image.dtype == torch.float32
    assert torch.allclose(image.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert image.shape[-1] == text.shape[-1]


def test_tiny_metadata(tiny):
    assert tiny.latent_shape((64, 96)) == (4, 8, 12)
    assert tiny.size_multiple == 8
    assert tiny.is_test_model and "tiny" in tiny.name and "no meaningful image" in tiny.name
    assert tiny.device == torch.device("cpu") and tiny.dtype == torch.float32
    assert tiny.scaling_factor == pytest.approx(0.18215)
    reference = NoiseSchedule.scaled_linear()
    assert torch.equal(tiny.schedule.alphas_cumprod, reference.alphas_cumprod)
    assert tiny.schedule.num_train_timesteps == 1000


def test_tiny_build_is_fast_deterministic_and_leaves_rng_alone(tiny):
    state = torch.random.get_rng_state()
    again = build_tiny_prior(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _best_time(build_tiny_prior, repeats=3) < 1.0
    for a, b in zip(tiny._modules(), again._modules()):
        assert _same_weights(a, b)
    assert not _same_weights(tiny.unet, build_tiny_prior(seed=1).unet)


def _best_time(function, repeats: int = 5) -> float:
    """Fastest of a few runs (the test machines are shared, single runs are noisy)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def test_tiny_unet_forward_is_fast(tiny):
    z, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    tiny.predict_noise(z, 10, text)  # warm-up
    assert _best_time(lambda: tiny.predict_noise(z, 10, text)) < 0.25


def test_weights_are_frozen_but_inputs_can_carry_gradients(tiny):
    assert not any(p.requires_grad for m in tiny._modules() for p in m.parameters())
    z = torch.randn(1, 4, 8, 8)
    assert not tiny.predict_noise(z, 10, torch.randn(1, 77, 32)).requires_grad
    z.requires_grad_(True)
    tiny.predict_noise(z, 10, torch.randn(1, 77, 32)).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    assert not tiny.embed_image(x).requires_grad


def test_long_prompt_warns_with_dropped_token_count(tiny):
    with pytest.warns(UserWarning, match=r"last \d+ token"):
        text = tiny.embed_text(["word " * 100])
    assert text.shape == (1, 77, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny.embed_text(["short prompt"])


def test_width_mismatch_is_refused(tiny):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    narrow = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            projection_dim=16,
        )
    )
    with pytest.raises(InvalidInputError, match="widths"):
        StableDiffusionPrior(tiny.unet, tiny.vae, tiny.text_encoder, tiny.tokenizer, narrow)


def test_release_keeps_a_cpu_model_usable():
    prior = build_tiny_prior()
    prior.release()
    assert prior.device.type == "cpu"
    assert prior.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 4, 2, 2)


def test_schedule_from_config():
    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    assert torch.equal(schedule_from_config(config).alphas_cumprod, NoiseSchedule.scaled_linear().alphas_cumprod)
    linear = schedule_from_config({"beta_schedule": "linear", "num_train_timesteps": 10})
    assert linear.num_train_timesteps == 10
    with pytest.raises(InvalidInputError, match="epsilon"):
        schedule_from_config({"prediction_type": "v_prediction"})


# -- devices, dtypes, caching ---------------------------------------------------------------


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type != "cuda"
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(InvalidInputError) as info:
        resolve_device("tpu")
    assert all(name in str(info.value) for name in ("auto", "cpu", "cuda", "mps"))


@pytest.mark.parametrize(
    "given, expected",
    [
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("float32", torch.float32),
        ("torch.float32", torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_resolve_dtype(given, expected):
    assert resolve_dtype(given, torch.device("cpu")) == expected


def test_dtype_defaults_and_errors():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("mps")) == torch.float32
    for bad in ("int8", torch.int32, 3):
        with pytest.raises(InvalidInputError, match="dtype"):
            resolve_dtype(bad, torch.device("cpu"))


def test_load_model_caches_per_spec_device_and_dtype():
    first = load_model("tiny", device="cpu")
    assert isinstance(first, StableDiffusionPrior) and first.is_test_model
    assert load_model("tiny", device="cpu") is first
    assert load_model("TINY", device="cpu", dtype="float32") is first
    other = load_model("tiny", device="cpu", dtype="bfloat16")
    assert other is not first and other.dtype == torch.bfloat16
    clear_model_cache()
    assert load_model("tiny", device="cpu") is not first


def test_prior_instance_is_returned_as_is(tiny):
    assert load_model(tiny) is tiny


def test_analytic_spec_loads():
    from napari_treg.models.analytic import AnalyticPrior

    assert isinstance(load_model("analytic", device="cpu"), AnalyticPrior)


# -- hub models (faked in a temporary cache) ------------------------------------------------


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
    assert _same_weights(prior.unet, tiny.unet) and _same_weights(prior.text_encoder, tiny.text_encoder)
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


def test_download_model_refuses_non_hub_specs():
    with pytest.raises(InvalidInputError, match="hub"):
        download_model("tiny")


def test_progress_is_forwarded_from_the_download_bars():
    seen = []
    bar = hub._progress_bar_class(lambda message, fraction: seen.append((message, fraction)), "repo/x")
    with bar(total=10, desc="Fetching 10 files", name="ignored") as progress_bar:
        progress_bar.update(5)
        progress_bar.refresh()
    assert any("repo/x" in m and "Fetching" in m for m, _ in seen)
    assert any(f == pytest.approx(0.5) for _, f in seen) and seen[-1][1] == pytest.approx(0.5)


# -- local folders --------------------------------------------------------------------------


def test_local_folder_loads_offline(hf_home, tiny, tiny_folder):
    prior = load_model(str(tiny_folder), device="cpu")
    assert isinstance(prior, StableDiffusionPrior) and prior.name == str(tiny_folder.resolve())
    for a, b in zip(tiny._modules(), prior._modules()):
        assert _same_weights(a, b)
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


# -- single checkpoint files ----------------------------------------------------------------


def test_nonexistent_paths_are_named(tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        load_model(str(missing), device="cpu")
    with pytest.raises(ModelNotFoundError, match="missing_folder"):
        load_model("./missing_folder", device="cpu")


def test_unknown_spec_lists_the_choices():
    with pytest.raises(ModelNotFoundError, match="sd15"):
        load_model("whatever", device="cpu")
    with pytest.raises(InvalidInputError):
        load_model(42, device="cpu")


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


def test_release_model_frees_only_that_model():
    from napari_treg.models import release_model

    first = load_model("tiny", device="cpu")
    second = load_model("tiny", device="cpu", dtype="bfloat16")
    release_model(first)
    assert load_model("tiny", device="cpu", dtype="bfloat16") is second
    assert load_model("tiny", device="cpu") is not first
