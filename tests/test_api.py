"""End-to-end ``restore`` / ``degrade`` with the tiny random-weight SD (every line of the SD path)."""

import threading

import numpy as np
import pytest
import torch

from napari_treg import Cancelled, InvalidInputError, degrade, restore
from napari_treg.operators import (
    Denoising,
    GaussianBlur,
    Inpainting,
    KernelBlur,
    MotionBlur,
    SuperResolution,
)

FAST = dict(steps=3, dc_every=1, dc_until=1.0)  # every step runs decode, CG, encode, negation


def _mask(h, w):
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 1
    return mask


OPERATORS = {
    "sr": lambda hw: SuperResolution(2),
    "gauss": lambda hw: GaussianBlur(1.5),
    "motion": lambda hw: MotionBlur(5, 30),
    "kernel": lambda hw: KernelBlur(np.ones((3, 5))),
    "inpaint": lambda hw: Inpainting(_mask(*hw)),
    "denoise": lambda hw: Denoising(),
}


@pytest.mark.parametrize("name", OPERATORS)
def test_restore_every_operator_end_to_end(tiny, name):
    rng = np.random.default_rng(0)
    measurement = (rng.random((20, 28)) * 4000).astype(np.uint16)
    before = measurement.copy()
    operator = OPERATORS[name](measurement.shape)
    result, info = restore(measurement, operator, prompt="cells", model=tiny, return_info=True, **FAST)
    factor = 2 if name == "sr" else 1
    assert result.shape == (20 * factor, 28 * factor)
    assert result.dtype == np.float32 and np.isfinite(result).all()
    np.testing.assert_array_equal(measurement, before)
    assert info["residual"] >= 0 and info["params"]["operator"] == repr(operator)
    assert info["params"]["steps"] == 3 and info["test_model"] is True
    assert set(info["versions"]) >= {"torch", "diffusers", "napari-treg"}


@pytest.mark.parametrize(
    "shape, rgb, expected",
    [
        ((24, 24), None, (24, 24)),
        ((24, 24, 3), None, (24, 24, 3)),
        ((24, 24, 4), None, (24, 24, 3)),  # RGBA: alpha dropped
        ((2, 24, 24), None, (2, 24, 24)),
        ((2, 2, 16, 16), None, (2, 2, 16, 16)),
        ((2, 16, 16, 3), None, (2, 16, 16, 3)),
        ((3, 16, 16), True, None),  # rgb=True needs a colour axis last
    ],
)
def test_grey_rgb_and_stacks_keep_their_layout(tiny, shape, rgb, expected):
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    if expected is None:
        with pytest.raises(InvalidInputError, match="rgb=True"):
            restore(image, Denoising(), model=tiny, rgb=rgb, **FAST)
    else:
        assert restore(image, Denoising(), model=tiny, rgb=rgb, **FAST).shape == expected


@pytest.mark.parametrize("dtype, low, high", [(np.uint8, 20, 200), (np.uint16, 1000, 40000), (np.float32, -0.5, 0.25)])
def test_results_come_back_in_the_input_intensity_scale(dtype, low, high):
    """With a prior that knows the image (the analytic disk), denoising returns the input's values."""
    from napari_treg.models.analytic import AnalyticPrior, template

    disk = template("disk", (32, 32))  # in [0.15, 0.85]
    image = (low + (high - low) * disk).astype(dtype)
    result = restore(image, Denoising(), model=AnalyticPrior(), prompt="a disk", steps=50, dc_until=1.0)
    assert result.dtype == np.float32
    assert np.abs(result - image.astype(np.float32)).mean() < 0.03 * (high - low)


def test_sizes_not_multiple_of_8_are_padded_and_cropped(tiny):
    image = np.random.default_rng(3).random((13, 21)).astype(np.float32)
    assert restore(image, GaussianBlur(1.0), model=tiny, **FAST).shape == (13, 21)
    assert restore(image[:12, :21], SuperResolution(3), model=tiny, **FAST).shape == (36, 63)


def test_same_seed_same_result_other_seed_other_result(tiny):
    image = np.random.default_rng(4).random((16, 16)).astype(np.float32)
    a = restore(image, GaussianBlur(1.0), model=tiny, seed=7, **FAST)
    b = restore(image, GaussianBlur(1.0), model=tiny, seed=7, **FAST)
    c = restore(image, GaussianBlur(1.0), model=tiny, seed=8, **FAST)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_stack_batches_equal_sequential_planes(tiny):
    plane = np.random.default_rng(5).random((16, 16)).astype(np.float32)
    plane[:2], plane[-2:] = 0, 1  # percentiles 0 and 1, alone or in the stack
    stack = np.stack([plane] * 3)
    one = restore(stack, GaussianBlur(1.0), model=tiny, batch_size=1, **FAST)
    three = restore(stack, GaussianBlur(1.0), model=tiny, batch_size=3, **FAST)
    np.testing.assert_allclose(one, three, atol=1e-4)
    assert np.abs(one[0] - one[1]).max() > 1e-3  # plane k uses seed + k
    second = restore(plane, GaussianBlur(1.0), model=tiny, seed=1, **FAST)
    np.testing.assert_allclose(second, one[1], atol=1e-4)


def test_progress_every_step_with_previews(tiny):
    calls = []
    stack = np.random.default_rng(6).random((2, 16, 16)).astype(np.float32)
    restore(
        stack,
        SuperResolution(2),
        model=tiny,
        steps=4,
        preview_every=2,
        progress=lambda step, total, preview=None: calls.append((step, total, preview)),
    )
    assert [c[:2] for c in calls] == [(k, 8) for k in range(1, 9)]
    previews = [c[2] for c in calls if c[2] is not None]
    assert len(previews) == 4 and all(p.shape == (32, 32) and p.dtype == np.float32 for p in previews)


@pytest.mark.parametrize("kind", ["event", "callable"])
def test_cancel_stops_within_one_step(tiny, kind):
    event = threading.Event()
    steps_seen = []

    def progress(step, total, preview=None):
        steps_seen.append(step)
        if step == 2:
            event.set()

    cancel = event if kind == "event" else event.is_set
    with pytest.raises(Cancelled):
        restore(np.zeros((16, 16), np.float32), Denoising(), model=tiny, steps=50, progress=progress, cancel=cancel)
    assert steps_seen == [1, 2]


def test_cancel_before_start_loads_nothing():
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        restore(np.zeros((16, 16)), Denoising(), model="no-such-model", cancel=event)


def test_degrade_applies_the_operator_and_seeded_noise():
    image = np.random.default_rng(7).random((32, 32)).astype(np.float32) * 100
    clean = degrade(image, SuperResolution(4), noise=0)
    assert clean.shape == (8, 8) and clean.dtype == np.float32
    # box SR of the image equals block means, in the input's scale
    box = degrade(image, SuperResolution(4, "box"), noise=0)
    np.testing.assert_allclose(box, image.reshape(8, 4, 8, 4).mean(axis=(1, 3)), rtol=1e-5)
    noisy = degrade(image, Denoising(), noise=0.05, seed=1)
    span = np.percentile(image, 99.9) - np.percentile(image, 0.1)
    assert abs(np.std(noisy - image) - 0.05 * span / 2) < 0.1 * 0.05 * span / 2
    np.testing.assert_array_equal(noisy, degrade(image, Denoising(), noise=0.05, seed=1))


def test_degrade_then_restore_round_trip_rgb_uint8(tiny):
    photo = np.random.default_rng(8).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    before = photo.copy()
    y = degrade(photo, SuperResolution(4), noise=0.01, seed=0)
    assert y.shape == (8, 8, 3)
    x = restore(y, SuperResolution(4), model=tiny, **FAST)
    assert x.shape == (32, 32, 3)
    np.testing.assert_array_equal(photo, before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=0), "steps"),
        (dict(steps=-3), "steps"),
        (dict(steps=2.5), "whole number"),
        (dict(guidance=float("nan")), "guidance"),
        (dict(cg_lambda=0), "cg_lambda"),
        (dict(dc_until=1.5), "dc_until"),
        (dict(batch_size=0), "batch_size"),
        (dict(method="magic"), "unknown method"),
        (dict(cancel=42), "cancel"),
    ],
)
def test_bad_parameters_raise_clear_errors(tiny, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        restore(np.zeros((16, 16)), Denoising(), model=tiny, **kwargs)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros(16), "at least 2D"),
        (np.zeros((1, 1, 1, 1, 1, 1, 8, 8)), "dimensions"),
        (np.array([[np.nan, 1], [1, 1]] * 4), "NaN"),
        (np.zeros((8, 8), bool), "boolean"),
        (np.zeros((8, 8), complex), "complex"),
        (np.array([["a", "b"]] * 4), "numeric"),
        (np.zeros((1, 8)), "at least"),
    ],
)
def test_bad_images_raise_clear_errors(tiny, image, message):
    with pytest.raises(InvalidInputError, match=message):
        restore(image, Denoising(), model=tiny, steps=1)


def test_operator_must_be_an_operator(tiny):
    with pytest.raises(InvalidInputError, match="operator"):
        restore(np.zeros((16, 16)), "sr", model=tiny)


def test_sr_of_an_image_too_small_for_the_model_is_refused(tiny):
    with pytest.raises(InvalidInputError, match="at least 8x8"):
        restore(np.zeros((3, 3)), SuperResolution(2), model=tiny)


def test_a_constant_image_gives_no_nan(tiny):
    result = restore(np.full((16, 16), 7, np.uint16), Denoising(), model=tiny, **FAST)
    assert np.isfinite(result).all()


def test_prompts_must_be_text(tiny):
    with pytest.raises(InvalidInputError, match="prompt must be text"):
        restore(np.zeros((16, 16)), Denoising(), model=tiny, prompt=3, steps=1)
    # None means no text
    a = restore(np.zeros((16, 16)), Denoising(), model=tiny, prompt=None, **FAST)
    b = restore(np.zeros((16, 16)), Denoising(), model=tiny, prompt="", **FAST)
    np.testing.assert_array_equal(a, b)


def test_a_real_model_on_the_cpu_warns_that_it_is_slow(tiny, monkeypatch):
    monkeypatch.setattr(tiny, "is_test_model", False)
    with pytest.warns(UserWarning, match="CPU"):
        restore(np.zeros((16, 16)), Denoising(), model=tiny, steps=1)


def test_residual_counts_only_measured_values_and_is_reported_against_the_noise():
    from napari_treg.imaging.metrics import residual_summary, residual_sums

    mask = np.zeros((8, 8), bool)
    mask[:4] = True  # top half missing
    op = Inpainting(mask)
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    y = torch.full((1, 1, 8, 8), 0.5, dtype=torch.float64)
    y[..., :4, :] = 99.0  # whatever a measurement holds where nothing was measured
    error, norm, count = residual_sums(op, x, y)
    assert count == 32 and error == 32 * 0.25 and norm == 32 * 0.25
    summary = residual_summary(np.array([error, norm, count]), noise=0.25)
    assert summary["residual"] == 1.0 and summary["residual_over_noise"] == 2.0
    assert residual_summary(np.array([error, norm, count]), noise=None)["residual_over_noise"] is None


def test_info_reports_the_residual_in_noise_units(tiny):
    image = np.random.default_rng(9).random((16, 16)).astype(np.float32)
    _, info = restore(image, GaussianBlur(1.0), model=tiny, noise=0.02, return_info=True, **FAST)
    assert info["noise"] == 0.02 and info["residual_over_noise"] > 0
    with pytest.raises(InvalidInputError, match="noise"):
        restore(image, GaussianBlur(1.0), model=tiny, noise=-1, **FAST)
