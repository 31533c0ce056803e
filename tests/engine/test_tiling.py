"""Tiled restoration (napari_treg.engine.tiling): geometry, blending, seams, operators per tile."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_treg import restore
from napari_treg.engine.tiling import (
    Tiling,
    ramp_weights,
    tile_operator,
    tile_starts,
)
from napari_treg.errors import InvalidInputError
from napari_treg.models.base import DiffusionPrior, NoiseSchedule
from napari_treg.operators import Denoising, GaussianBlur, Inpainting, SuperResolution

FAST = dict(steps=6, guidance=0.0, adaptive_negation=False)


class EchoPrior(DiffusionPrior):
    """Identity autoencoder whose denoiser returns the last data-consistent estimate.

    Its result is the limit of repeated data-consistency steps: a smooth function of the
    measurement, with no sampler noise, so tiles differ only by their borders.
    """

    name = "echo (test)"
    is_test_model = True

    def __init__(self):
        self.schedule = NoiseSchedule.scaled_linear()
        self.last = None
        self.last_t = None

    def latent_shape(self, image_hw):
        return (3, *image_hw)

    def encode(self, x):
        self.last = x.float().clone()
        return self.last

    def decode(self, z):
        return z.float()

    def predict_noise(self, z, t, text):
        if self.last_t is None or t > self.last_t:  # a new run starts at the highest t
            self.last = None
        self.last_t = t
        a = float(self.schedule.alphas_cumprod[t])
        if self.last is None or self.last.shape != z.shape:
            return z / (1 - a) ** 0.5  # x0 estimate 0 until the first data-consistency step
        return (z - a**0.5 * self.last) / (1 - a) ** 0.5

    def embed_text(self, prompts):
        return torch.zeros(len(prompts), 2, 4)

    def embed_image(self, x):
        return torch.nn.functional.normalize(torch.ones(x.shape[0], 4), dim=-1)


def smooth_image(h=96, w=96):
    yy, xx = np.mgrid[0:h, 0:w] / 32.0
    return (100 + 40 * np.sin(yy) * np.cos(0.7 * xx) + 20 * xx).astype(np.float32)


# -- geometry -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length,tile,overlap", [(64, 64, 16), (65, 64, 16), (256, 64, 16), (2048, 512, 64), (100, 30, 7)]
)
def test_tiles_cover_with_the_overlap_and_weights_sum_to_one(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    total = np.zeros(length)
    for start, w in zip(starts, ramp_weights(starts, min(tile, length))):
        assert (w >= 0).all()
        total[start : start + len(w)] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_super_resolution_tiles_are_cut_in_the_measurement():
    plan = Tiling.plan(SuperResolution(4), (128, 64), tile_size=128, tile_overlap=30)
    assert plan.scale == 4 and plan.tile_hw == (32, 32) and plan.overlap == 8
    assert plan.output_slices()[0] == (slice(0, 128), slice(0, 128))
    out = np.zeros((512, 256))
    for (rows, cols), w in zip(plan.output_slices(), plan.weights()):
        out[rows, cols] += w
    np.testing.assert_allclose(out, 1.0, atol=1e-12)


def test_bad_tile_parameters_are_refused():
    with pytest.raises(InvalidInputError, match="tile_overlap"):
        Tiling.plan(Denoising(), (100, 100), tile_size=64, tile_overlap=64)
    with pytest.raises(InvalidInputError, match="tile_size"):
        Tiling.plan(Denoising(), (100, 100), tile_size=4, tile_overlap=0)


def test_inpainting_mask_is_cut_per_tile():
    mask = np.zeros((64, 64), bool)
    mask[:32, :32] = True
    mask[40:44, 40:44] = True
    op = Inpainting(mask)
    whole = tile_operator(op, slice(0, 16), slice(0, 16))  # all missing: allowed for a tile
    assert isinstance(whole, Inpainting) and bool(whole.missing.all())
    assert isinstance(tile_operator(op, slice(48, 64), slice(0, 16)), Denoising)  # none missing
    part = tile_operator(op, slice(32, 64), slice(32, 64))
    assert isinstance(part, Inpainting) and part.missing.shape == (32, 32) and int(part.missing.sum()) == 16
    padded = whole.padded(3, 5)
    assert padded.missing.shape == (19, 21) and bool(padded.missing.all())
    assert tile_operator(GaussianBlur(1.0), slice(0, 8), slice(0, 8)).__class__ is GaussianBlur


# -- restoring ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from napari_treg.models import load_model

    return load_model("tiny", device="cpu")


def test_an_image_that_fits_one_tile_is_restored_exactly_as_restore_does(tiny):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1000, (2, 32, 40)).astype(np.uint16)  # a stack of two planes
    direct = restore(image, GaussianBlur(1.0), model=tiny, seed=3, **FAST)
    tiled = restore(image, GaussianBlur(1.0), model=tiny, seed=3, tile_size=64, tile_overlap=8, **FAST)
    assert tiled.shape == direct.shape == (2, 32, 40)
    np.testing.assert_array_equal(tiled, direct)


def test_rgb_super_resolution_fits_one_tile(tiny):
    image = np.random.default_rng(1).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    direct = restore(image, SuperResolution(2), model=tiny, **FAST)
    tiled = restore(image, SuperResolution(2), model=tiny, tile_size=64, tile_overlap=8, **FAST)
    assert tiled.shape == direct.shape == (32, 32, 3)
    np.testing.assert_array_equal(tiled, direct)


def test_denoising_with_a_prior_that_reproduces_the_measurement_reproduces_the_image():
    image = smooth_image()
    out, info = restore(image, Denoising(), model=EchoPrior(), tile_size=40, tile_overlap=12, return_info=True, **FAST)
    assert info["tiling"]["tiles"] == 9 and info["tiling"]["calls"] == 1
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-3 * np.ptp(image))
    assert info["residual"] < 1e-3


def _kink(image, border=4):
    """Largest second difference along either axis, away from the image border (a seam is a kink)."""
    inner = image[border:-border, border:-border].astype(np.float64)
    return max(np.abs(np.diff(inner, 2, axis=0)).max(), np.abs(np.diff(inner, 2, axis=1)).max())


@pytest.fixture(scope="module")
def deblurring():
    """A smooth image, its blur, and a few data-consistency iterations as the "restoration"."""
    truth = smooth_image(64, 64)
    op = GaussianBlur(1.5)
    blurred = op.forward(torch.from_numpy(truth)[None, None].double())[0, 0].numpy().astype(np.float32)
    kwargs = dict(
        model=EchoPrior(), steps=4, dc_every=1, dc_until=1.0, cg_iterations=4, guidance=0.0, adaptive_negation=False
    )
    whole = restore(blurred, op, **kwargs)
    return truth, blurred, op, kwargs, whole


def test_seams_are_invisible_on_a_smooth_image(deblurring):
    """Deblurring tiles with mirrored borders disagree near their edges; the blend hides it."""
    truth, blurred, op, kwargs, whole = deblurring
    tiled = restore(blurred, op, tile_size=32, tile_overlap=12, **kwargs)
    assert Tiling.plan(op, truth.shape, 32, 12).count == 9
    assert _kink(tiled) <= 3 * _kink(whole)  # no kink beyond what the restoration itself makes
    assert np.abs(tiled - whole).max() <= 0.005 * np.ptp(truth)


def test_hard_stitching_would_show_the_seams(deblurring):
    """The seam test is sensitive: pasting the same tiles without blending leaves kinks."""
    truth, blurred, op, kwargs, whole = deblurring
    pasted = np.zeros_like(truth)
    for rows, cols in Tiling.plan(op, truth.shape, 32, 12).slices():
        pasted[rows, cols] = restore(blurred[rows, cols], op, **kwargs)
    assert _kink(pasted) > 10 * _kink(whole)


def test_tiled_inpainting_keeps_the_measured_pixels():
    image = smooth_image(64, 64)
    mask = np.zeros(image.shape, bool)
    mask[20:28, 20:60] = True
    mask[:16, :16] = True  # one whole tile missing
    measured = np.where(mask, 0, image).astype(np.float32)
    out, info = restore(
        measured, Inpainting(mask), model=EchoPrior(), tile_size=16, tile_overlap=4, return_info=True, **FAST
    )
    assert out.shape == image.shape and info["tiling"]["calls"] == info["tiling"]["tiles"] == 25
    np.testing.assert_allclose(out[~mask], image[~mask], atol=1e-2 * np.ptp(image))


def test_a_large_image_is_restored_in_tiles_with_the_tiny_model(tiny):
    image = smooth_image(256, 256)
    seen = []
    out, info = restore(
        image,
        Denoising(),
        model=tiny,
        tile_size=64,
        tile_overlap=16,
        batch_size=25,
        return_info=True,
        progress=lambda done, total, preview=None: seen.append((done, total, preview)),
        preview_every=3,
        steps=3,
        guidance=0.0,
        adaptive_negation=False,
    )
    assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert info["tiling"]["tiles"] == 25 and info["tiling"]["calls"] == 1
    assert seen[-1][0] == seen[-1][1] == 3
    previews = [p for *_, p in seen if p is not None]
    assert previews and previews[0].shape == image.shape


def test_tiled_super_resolution_with_several_tiles_has_the_right_size():
    y = smooth_image(48, 40)
    out = restore(y, SuperResolution(2), model=EchoPrior(), tile_size=48, tile_overlap=16, **FAST)
    assert out.shape == (96, 80) and np.isfinite(out).all()
