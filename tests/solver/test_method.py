"""The method as implemented: one test per row of docs/method.md's differences from the authors' code.

Each test pins napari-treg's choice, so it fails if the behaviour changes either way (towards
the authors' code or elsewhere). The adaptive-negation row is tested in tests/solver/test_solver.py
(a fresh torch.optim.Adam per data-consistency step).
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_treg.errors import InvalidInputError
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.models.base import NoiseSchedule
from napari_treg.operators import Denoising, Inpainting
from napari_treg.solver import SCHEDULES, TRegSettings, data_consistency, ddim_steps, schedule_settings, treg_sample
from napari_treg.solver.sampler import guided_noise
from napari_treg.solver.schedules import SCHEDULE_FIELDS

# -- alphas: diffusers' DDIM indexing, abar[t] for the timestep t the UNet sees ------------------------


@pytest.mark.parametrize("count", [200, 50, 20])
def test_each_step_uses_the_alpha_of_the_timestep_the_model_sees(count):
    abar = NoiseSchedule.scaled_linear().alphas_cumprod
    steps = ddim_steps(NoiseSchedule.scaled_linear(), count, 3, 0.85)
    assert all(step.a == float(abar[step.t]) for step in steps)  # the authors' code: abar[t - 1]
    # the last step lands on abar[0] < 1 and is a real step (the authors' last step is a no-op)
    assert steps[-1].t == 1 and steps[-1].a_prev == float(abar[0]) and steps[-1].a < steps[-1].a_prev < 1


# -- DC schedule: a fraction of the steps, whatever their number ------------------------------------------


@pytest.mark.parametrize(("count", "expected"), [(200, range(0, 170, 3)), (50, range(0, 43, 3)), (20, range(0, 17, 3))])
def test_dc_steps_stop_at_85_percent_of_any_number_of_steps(count, expected):
    steps = ddim_steps(NoiseSchedule.scaled_linear(), count, 3, 0.85)
    # the authors' rule (step < 170) would do DC through the end of a 50- or 20-step run
    assert [s.index for s in steps if s.data_consistency] == list(expected)


# -- CFG at w = 1: the prompt's prediction --------------------------------------------------------------


def test_guidance_one_is_the_prompt_conditional_prediction():
    prior = AnalyticPrior()
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    text, null = prior.embed_text(["a disk"] * 2), prior.embed_text([""] * 2)
    eps = guided_noise(prior, z, 501, text, null, 1.0)
    assert torch.allclose(eps, prior.predict_noise(z, 501, text), atol=1e-6)
    assert not torch.allclose(eps, prior.predict_noise(z, 501, null), atol=1e-3)  # the authors' w = 1


def test_default_guidance_is_the_papers():
    assert TRegSettings().guidance == 7.5


# -- VAE encode: the posterior mean ---------------------------------------------------------------------


def test_encode_is_the_scaled_posterior_mean(tiny):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    z = tiny.encode(x)
    dist = tiny.vae.encode(x).latent_dist
    assert float(dist.std.min()) > 0  # a sample would differ from the mean
    assert torch.equal(z, tiny.encode(x))
    assert torch.allclose(z, dist.mean * tiny.scaling_factor, atol=1e-6)


# -- CLIP image preprocessing: antialiased bicubic resize, clamp to [0, 1] ---------------------------------


def test_clip_pixels_antialias_and_clamp(tiny):
    x = torch.ones(1, 3, 64, 64)
    x[..., ::2, :] = -1  # a line pattern above the tower's Nyquist frequency
    x[..., :8, :8] = 1.5  # and a corner beyond the image range
    mean = torch.tensor(tiny.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(tiny.image_std).view(1, 3, 1, 1)
    size = (tiny.image_size, tiny.image_size)
    expected = F.interpolate(x, size=size, mode="bicubic", antialias=True).add(1).div(2).clamp(0, 1)
    got = tiny.clip_pixels(x)
    assert torch.allclose(got, (expected - mean) / std, atol=1e-6)
    authors = F.interpolate(x, size=size, mode="bicubic", align_corners=True).add(1).div(2)
    assert float((got * std + mean - authors).abs().max()) > 0.4  # aliasing and no clamp in theirs
    assert float((got * std + mean).max()) <= 1 + 1e-6


# -- final image: not clamped ---------------------------------------------------------------------------


def test_the_result_is_not_clamped_to_the_image_range():
    prior = AnalyticPrior()  # class templates at 0.7 in [-1, 1], per-pixel std 0.2: samples pass 1
    y = torch.zeros(4, 3, 16, 16)
    out = treg_sample(
        prior,
        y,
        Denoising(),
        (16, 16),
        text=prior.embed_text(["a disk"] * 4),
        null=prior.embed_text([""] * 4),
        config=TRegSettings(dc_every=0),
        generators=[torch.Generator().manual_seed(k) for k in range(4)],
    )
    assert float(out.max()) > 1.1  # the authors' code would clamp to [-1, 1]


# -- final data-consistency projection (final_dc) -----------------------------------------------------------


def test_final_dc_is_one_more_data_consistency_solve_of_the_result():
    prior = AnalyticPrior()
    mask = np.zeros((16, 16), bool)
    mask[4:12, 8:] = True
    op = Inpainting(mask)
    y = op(prior.means((16, 16))[:1].expand(2, -1, -1, -1))
    kwargs = dict(text=prior.embed_text(["a disk"] * 2), null=prior.embed_text([""] * 2))

    def run(config):
        generators = [torch.Generator().manual_seed(k) for k in range(2)]
        return treg_sample(prior, y, op, (16, 16), config=config, generators=generators, **kwargs)

    assert TRegSettings().final_dc is False
    plain = run(TRegSettings(steps=20))
    projected = run(TRegSettings(steps=20, final_dc=True))
    assert torch.allclose(projected, data_consistency(op, y, plain, 1e-4, 5), atol=1e-6)
    assert not torch.allclose(projected, plain, atol=1e-2)


# -- named schedules ------------------------------------------------------------------------------------


def test_paper_schedule_is_the_default_config():
    paper = schedule_settings("paper")
    assert paper == {name: getattr(TRegSettings(), name) for name in SCHEDULE_FIELDS}
    assert paper == {
        "dc_every": 3,
        "dc_until": 0.85,
        "cg_iterations": 5,
        "final_dc": False,
        "data_first": False,
        "renoise_eta": TRegSettings().renoise_eta,  # not used without data_first
    }


def test_faithful_schedule_is_the_papers_plus_a_final_projection():
    faithful = schedule_settings("faithful")
    assert set(faithful) == set(SCHEDULE_FIELDS) <= {f.name for f in fields(TRegSettings)}
    assert TRegSettings(**faithful) == TRegSettings(final_dc=True)


def test_schedule_settings_returns_a_copy_and_rejects_unknown_names():
    settings = schedule_settings("paper")
    settings["dc_until"] = 0.1
    assert SCHEDULES["paper"]["dc_until"] == 0.85
    with pytest.raises(InvalidInputError, match="schedule"):
        schedule_settings("fast")
    assert sorted(SCHEDULES) == ["data-first", "faithful", "paper"]


def test_data_first_schedule_is_the_papers_plus_data_first_renoising_and_a_final_projection():
    assert TRegSettings(**schedule_settings("data-first")) == TRegSettings(data_first=True, final_dc=True)


def test_data_first_renoising_takes_the_data_consistent_estimate_at_full_weight():
    """``sqrt(a') z0y + sqrt(1 - a') (sqrt(1 - eta) eps + sqrt(eta) n)``: total noise variance ``1 - a'``."""
    from napari_treg.solver.sampler import Step, renoise_data_first

    step = Step(0, 901, 0.05, 0.04, True)
    z0y, eps, n = torch.full((1,), 2.0), torch.full((1,), 0.5), torch.full((1,), -1.0)
    z = renoise_data_first(z0y, eps, step, n, 0.2)
    expected = math.sqrt(0.04) * 2.0 + math.sqrt(0.96) * (math.sqrt(0.8) * 0.5 - math.sqrt(0.2))
    assert float(z) == pytest.approx(expected, rel=1e-6)
    eps, n = torch.randn(200_000, generator=torch.Generator().manual_seed(0)).chunk(2)
    variance = renoise_data_first(torch.zeros(100_000), eps, step, n, 0.2).var().item()
    assert variance == pytest.approx(0.96, rel=0.02)


def test_math_of_the_closed_form_adam_step():
    """K Adam steps from zero moments with a constant gradient move by K * lr * g / (|g| + eps)."""
    g = torch.tensor([1e-3, -2e-4, 0.0])
    u = torch.zeros(3, requires_grad=True)
    adam = torch.optim.Adam([u], lr=0.1)
    for _ in range(7):
        adam.zero_grad()
        (u * g).sum().backward()
        adam.step()
    assert torch.allclose(u.detach(), -0.7 * g / (g.abs() + 1e-8), atol=1e-6)
    assert float(u.detach()[2]) == 0.0
