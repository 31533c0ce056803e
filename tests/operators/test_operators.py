"""Operators: exact adjoints, shapes, dtypes, and the physics each one claims."""

import numpy as np
import pytest
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.operators import (
    Denoising,
    GaussianBlur,
    Inpainting,
    KernelBlur,
    MotionBlur,
    SuperResolution,
)

SHAPES = [(1, 1, 24, 24), (2, 3, 30, 45), (3, 2, 15, 9)]


def operators_for(shape):
    h, w = shape[-2:]
    mask = np.zeros((h, w), bool)
    mask[h // 3 : h // 2, 1 : w // 2] = True
    ops = [
        GaussianBlur(1.5),
        GaussianBlur(5.0, size=61),  # kernel larger than the image: periodic mirror
        MotionBlur(7, angle=30),
        KernelBlur(np.random.default_rng(0).random((4, 7))),
        Inpainting(mask),
        Denoising(),
    ]
    for factor in (1, 2, 3, 4, 5, 16):
        if h % factor == 0 and w % factor == 0:
            ops += [SuperResolution(factor, f) for f in ("bicubic", "box", "gaussian")]
    return ops


@pytest.mark.parametrize("shape", SHAPES)
def test_every_operator_is_adjoint_to_1e6(shape):
    gen = torch.Generator().manual_seed(1)
    for op in operators_for(shape):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        y = torch.randn(shape[:2] + op.measurement_hw(shape[-2:]), generator=gen, dtype=torch.float64)
        lhs = (op.forward(x) * y).sum()
        rhs = (x * op.adjoint(y)).sum()
        assert abs(lhs - rhs) <= 1e-6 * abs(lhs), op
        assert op.adjoint(y).shape == x.shape, op


def test_adjointness_check_catches_a_wrong_adjoint():
    """The test above would fail for a plausible mistake: correlating instead of convolving."""
    op = KernelBlur(np.array([[0.0, 1.0, 3.0]]))
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    y = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    wrong_adjoint = op.forward(y)  # A used as its own adjoint: only right for symmetric kernels
    assert abs((op.forward(x) * y).sum() - (x * wrong_adjoint).sum()) > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_operators_keep_dtype_and_shape(dtype):
    shape = (2, 3, 32, 32)
    for op in operators_for(shape):
        x = torch.rand(shape).to(dtype)
        y = op.forward(x)
        assert y.dtype == dtype and y.shape == shape[:2] + op.measurement_hw(shape[-2:]), op
        assert op.adjoint(y).dtype == dtype, op
        assert torch.isfinite(y.float()).all(), op


def test_half_precision_blurs_on_the_cpu_convolve_in_float32(monkeypatch):
    """torch's float16 CPU convolutions are its slow generic kernels (one ran past 900 s on a
    Sapphire Rapids CPU, issue 33): the operators convolve float16 CPU tensors in float32."""
    import torch.nn.functional as F

    seen = []
    for name in ("conv2d", "conv_transpose2d"):
        original = getattr(F, name)
        monkeypatch.setattr(F, name, lambda x, w, *a, _f=original, **k: seen.append(x.dtype) or _f(x, w, *a, **k))
    x = torch.rand(1, 3, 32, 32).half()
    for op in (GaussianBlur(3.0), MotionBlur(7, 30), SuperResolution(4)):  # GaussianBlur(3.0): a 1x25 kernel
        y = op.forward(x)
        assert y.dtype == torch.float16 and op.adjoint(y).dtype == torch.float16
        expected = op.forward(x.float())
        assert torch.allclose(y.float(), expected, atol=2e-3)
    assert seen and set(seen) == {torch.float32}


@pytest.mark.parametrize("op", [GaussianBlur(2.0), MotionBlur(9, 45), SuperResolution(4), SuperResolution(3, "box")])
def test_blurs_preserve_constants_and_mass(op):
    x = torch.full((1, 1, 48, 48), 0.7, dtype=torch.float64)
    assert torch.allclose(op.forward(x), torch.full_like(op.forward(x), 0.7))


def test_box_super_resolution_is_pixel_binning():
    x = torch.arange(16.0, dtype=torch.float64).reshape(1, 1, 4, 4)
    y = SuperResolution(2, "box").forward(x)
    expected = torch.tensor([[2.5, 4.5], [10.5, 12.5]], dtype=torch.float64)
    assert torch.allclose(y[0, 0], expected)


def test_bicubic_super_resolution_has_4_factor_taps_and_is_symmetric():
    op = SuperResolution(4)
    assert op._taps.tensor.numel() == 16
    assert torch.allclose(op._taps.tensor, op._taps.tensor.flip(0))


def test_gaussian_blur_matches_scipy_style_reference():
    """An impulse in the middle spreads into the separable Gaussian kernel."""
    x = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    x[0, 0, 10, 10] = 1
    y = GaussianBlur(1.0, size=7).forward(x)[0, 0]
    g = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    g /= g.sum()
    assert np.allclose(y[7:14, 7:14].numpy(), np.outer(g, g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64 runs by FFT
def test_kernel_blur_convolves_not_correlates(dtype):
    """A PSF that is one pixel right of centre moves the image one pixel right."""
    psf = np.zeros((3, 3))
    psf[1, 2] = 1
    x = torch.zeros(1, 1, 9, 9, dtype=dtype)
    x[0, 0, 4, 4] = 1
    y = KernelBlur(psf).forward(x)[0, 0].double()
    assert abs(float(y[4, 5]) - 1) < 1e-6 and abs(float(y.sum()) - 1) < 1e-6 and float(y.abs().max()) < 1 + 1e-6


def test_kernel_blur_in_float64_by_fft_equals_the_direct_convolution():
    """The float64 path (FFT, bounded memory) equals the direct float32 convolution and scipy's, and stays adjoint."""
    from scipy import ndimage

    rng = np.random.default_rng(3)
    psf = rng.random((5, 7))
    x = torch.from_numpy(rng.random((2, 3, 17, 12)))
    y = torch.from_numpy(rng.random((2, 3, 17, 12)))
    op = KernelBlur(psf)
    forward64, forward32 = op.forward(x), op.forward(x.float())
    assert torch.allclose(forward64, forward32.double(), atol=1e-5)
    kernel = psf / psf.sum()
    reference = np.stack([[ndimage.convolve(c, kernel, mode="reflect", origin=(0, 0)) for c in b] for b in x.numpy()])
    assert np.allclose(forward64.numpy(), reference, atol=1e-12)
    lhs, rhs = float((forward64 * y).sum()), float((x * op.adjoint(y)).sum())
    assert abs(lhs - rhs) < 1e-12 * abs(lhs)


def test_motion_blur_is_a_line_at_the_given_angle():
    horizontal = MotionBlur(9, angle=0).kernel.numpy()
    vertical = MotionBlur(9, angle=90).kernel.numpy()
    assert np.isclose(horizontal.sum(), 1)
    assert np.allclose(horizontal.sum(axis=0)[1:-1], horizontal.sum(axis=0)[1:-1].mean(), atol=0.02)
    assert horizontal.sum(axis=1)[horizontal.shape[0] // 2] > 0.99
    assert np.allclose(vertical, horizontal.T, atol=1e-12)


def test_inpainting_zeroes_missing_pixels_only():
    mask = np.zeros((6, 6), np.uint8)
    mask[2:4, 2:4] = 3  # a label > 0 = missing
    x = torch.ones(1, 3, 6, 6)
    y = Inpainting(mask).forward(x)
    assert y[..., 2:4, 2:4].abs().sum() == 0
    assert y.sum() == 3 * 32


def test_inpainting_padded_mask_follows_the_mirror_rule():
    mask = np.zeros((5, 5), bool)
    mask[-1, :2] = True
    padded = Inpainting(mask).padded(2, 1)
    assert padded.missing.shape == (7, 6)
    assert padded.missing[5, :2].all()  # mirrored row


def test_repr_is_readable():
    assert repr(SuperResolution(4)) == "SuperResolution(factor=4, filter='bicubic')"
    assert repr(GaussianBlur(5, 61)) == "GaussianBlur(sigma=5, size=61)"
    assert repr(MotionBlur(9, 30)) == "MotionBlur(length=9, angle=30)"
    assert "missing=" in repr(Inpainting(np.eye(4)))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SuperResolution(0), "factor"),
        (lambda: SuperResolution(-2), "factor"),
        (lambda: SuperResolution(2.5), "whole number"),
        (lambda: SuperResolution(2, "lanczos"), "filter"),
        (lambda: GaussianBlur(-1), "sigma"),
        (lambda: GaussianBlur(float("nan")), "sigma"),
        (lambda: GaussianBlur(2, size=4), "odd"),
        (lambda: MotionBlur(0), "length"),
        (lambda: KernelBlur(np.zeros((3, 3))), "all zero"),
        (lambda: KernelBlur(-np.ones((3, 3))), "negative"),
        (lambda: KernelBlur(np.full((3, 3), np.nan)), "NaN"),
        (lambda: KernelBlur(np.ones(5)), "2D"),
        (lambda: Inpainting(np.zeros((4, 4))), "no pixel"),
        (lambda: Inpainting(np.ones((4, 4))), "every pixel"),
        (lambda: Inpainting(np.ones((2, 4, 4))), "2D"),
    ],
)
def test_bad_parameters_raise_clear_errors(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


def test_shape_errors_name_the_fix():
    with pytest.raises(InvalidInputError, match="not divisible"):
        SuperResolution(4).check_image_hw((30, 32))
    with pytest.raises(InvalidInputError, match="same height and width"):
        Inpainting(np.eye(4)).forward(torch.zeros(1, 1, 5, 5))


def test_operator_constants_are_copied_once_per_device_and_dtype():
    op = SuperResolution(4)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float32)
    first = op._taps.like(x)
    assert first.dtype == torch.float32 and first is op._taps.like(x)  # cached, not copied per call
    assert op._taps.like(x.double()).dtype == torch.float64
    assert torch.equal(op.forward(x), op.forward(x))


def test_motion_blur_angle_minus_zero_is_zero():
    assert repr(MotionBlur(3, -0.0)) == repr(MotionBlur(3, 0.0)) == "MotionBlur(length=3, angle=0)"
