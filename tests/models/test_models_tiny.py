"""The tiny offline test model (models/tiny.py) and the StableDiffusionPrior it builds
(models/stable_diffusion.py): shapes, dtypes, metadata, speed, frozen weights, prompts, the scheduler config.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from models_helpers import same_weights

from napari_treg.errors import InvalidInputError
from napari_treg.models import NoiseSchedule, StableDiffusionPrior, build_tiny_prior
from napari_treg.models.stable_diffusion import schedule_from_config

# shared fixtures (tests/models_helpers.py): binding one here registers it for this module


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


def test_tiny_build_is_deterministic_and_leaves_rng_alone(tiny):
    """(How fast it builds and runs is benchmarks/tiny_model.py's to check, not a test's.)"""
    state = torch.random.get_rng_state()
    again = build_tiny_prior(seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(tiny._modules(), again._modules()):
        assert same_weights(a, b)
    assert not same_weights(tiny.unet, build_tiny_prior(seed=1).unet)


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
