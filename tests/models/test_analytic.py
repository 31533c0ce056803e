"""The analytic prior: templates, text/image embeddings and the exact noise prediction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_treg.models.analytic import AnalyticPrior, prompt_classes, template
from napari_treg.models.base import DiffusionPrior


@pytest.fixture(scope="module")
def prior() -> AnalyticPrior:
    return AnalyticPrior()


# -- templates --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["disk", "square", "ring", "cross"])
def test_templates_are_images_in_unit_range_of_equal_area(name):
    image = template(name, (64, 64))
    assert image.shape == (64, 64) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    # same area (foreground mass) as the disk, so down-sampling cannot tell them apart by brightness
    assert math.isclose(image.sum(), template("disk", (64, 64)).sum(), rel_tol=0.02)


def test_template_shapes_and_sizes():
    assert template("disk", (3, 24, 40)).shape == (3, 24, 40)
    assert template("disk", (24, 40, 3)).shape == (24, 40, 3)
    assert not np.allclose(template("disk", (32, 32)), template("square", (32, 32)))
    with pytest.raises(ValueError):
        template("triangle", (8, 8))


# -- the interface ----------------------------------------------------------------------------


def test_identity_autoencoder_any_size(prior):
    assert isinstance(prior, DiffusionPrior) and prior.is_test_model
    assert prior.size_multiple == 1
    assert prior.latent_shape((24, 40)) == (3, 24, 40)
    x = torch.rand(2, 3, 24, 40) * 2 - 1
    assert torch.equal(prior.decode(prior.encode(x)), x)
    assert prior.means((24, 40)).shape == (2, 3, 24, 40)


def test_prompts_select_classes():
    classes = ("disk", "square")
    assert prompt_classes("a disk", classes) == [0]
    assert prompt_classes("A photo of a Square.", classes) == [1]
    assert prompt_classes("disks or squares", classes) == [0, 1]
    assert prompt_classes("", classes) == [] and prompt_classes("out of focus", classes) == []


def test_text_embedding_carries_class_weights(prior):
    text = prior.embed_text(["a disk", "square", "", "out of focus, depth of field"])
    assert text.shape == (4, 4, prior.embedding_width)
    weights = prior.class_log_weights(text).exp()
    assert weights[0, 0] > 1 - 1e-6 and weights[1, 1] > 1 - 1e-6
    assert torch.allclose(weights[2:], torch.full((2, 2), 0.5))


def test_image_embedding_is_unit_and_points_to_the_shown_class(prior):
    means = prior.means((32, 32))
    f = prior.embed_image(means)
    assert f.shape == (2, prior.embedding_width)
    assert torch.allclose(f.norm(dim=1), torch.ones(2), atol=1e-6)
    assert f[0, 0] > 0 > f[0, 1] and f[1, 1] > 0 > f[1, 0]
    # an image halfway between the classes is neutral, and still unit length
    neutral = prior.embed_image(means.mean(dim=0, keepdim=True))
    assert torch.allclose(neutral, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)


def test_classify_recovers_the_class_of_exact_samples(prior):
    x, labels = prior.sample(64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(prior.classify(x), labels)


# -- the exact noise prediction ---------------------------------------------------------------


def _reference_log_density(prior: AnalyticPrior, z: torch.Tensor, a: float, weights: torch.Tensor) -> torch.Tensor:
    """log p(z_t) of the mixture, from torch.distributions (independent of predict_noise)."""
    means = prior.means(tuple(z.shape[-2:])).double().flatten(1)
    std = math.sqrt(a * prior.latent_std**2 + 1 - a)
    out = []
    for b in range(z.shape[0]):
        components = torch.distributions.Independent(torch.distributions.Normal(math.sqrt(a) * means, std), 1)
        mixture = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(weights[b]), components)
        out.append(mixture.log_prob(z[b].flatten()))
    return torch.stack(out)


@pytest.mark.parametrize("t", [1, 101, 501, 996])
def test_predict_noise_is_minus_scaled_score(prior, t):
    a = float(prior.schedule.alphas_cumprod[t])
    gen = torch.Generator().manual_seed(t)
    x0, _ = prior.sample(4, image_hw=(8, 8), generator=gen)
    z = (math.sqrt(a) * x0 + math.sqrt(1 - a) * torch.randn(x0.shape, generator=gen)).double()
    text = prior.embed_text(["a disk", "a square", "", "a disk or a square"])  # per-sample conditioning
    weights = prior.class_log_weights(text).exp().double()
    z.requires_grad_(True)
    (grad,) = torch.autograd.grad(_reference_log_density(prior, z, a, weights).sum(), z)
    expected = -math.sqrt(1 - a) * grad
    got = prior.predict_noise(z.detach().float(), t, text).double()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3)


def test_predict_noise_is_the_mmse_noise_estimate(prior):
    """E[eps | z_t] by Monte Carlo: eps_hat must beat a perturbed estimate, and match on average."""
    t = 301
    a = float(prior.schedule.alphas_cumprod[t])
    gen = torch.Generator().manual_seed(1)
    x0, _ = prior.sample(4096, image_hw=(4, 4), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    z = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    null = prior.embed_text([""]).expand(len(z), -1, -1)
    eps_hat = prior.predict_noise(z, t, null)
    mse = (eps_hat - eps).square().mean()
    assert mse < (1.05 * eps_hat - eps).square().mean() and mse < (0.95 * eps_hat - eps).square().mean()
    # the residual eps - eps_hat is orthogonal to eps_hat (a property of the conditional mean)
    inner = (eps_hat * (eps - eps_hat)).flatten(1).sum(1)
    assert abs(inner.mean()) < 5 * inner.std() / math.sqrt(len(inner))


def test_half_precision_emulation_returns_the_model_dtype():
    for dtype in (torch.float16, torch.bfloat16):
        prior = AnalyticPrior(dtype=dtype)
        z = torch.randn(2, 3, 16, 16)
        text = prior.embed_text(["a disk", ""])
        assert prior.predict_noise(z, 500, text).dtype == dtype
        assert prior.decode(z).dtype == dtype and prior.embed_image(z).dtype == dtype
        assert torch.isfinite(prior.predict_noise(z, 1, text)).all()
