"""Property-based tests (hypothesis): operators, intensity scaling and ``restore`` input validation.

Settings are modest (a few dozen examples, no deadline) so the file runs in seconds.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from napari_treg import degrade, restore
from napari_treg.errors import InvalidInputError
from napari_treg.imaging.layout import IntensityScale
from napari_treg.operators import (
    Denoising,
    GaussianBlur,
    Inpainting,
    KernelBlur,
    LinearOperator,
    MotionBlur,
    SuperResolution,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RUNS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TINY_RUNS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ operators


@st.composite
def operators(draw, hw: tuple[int, int]) -> LinearOperator:
    """Any operator, with random valid parameters, for images of size ``hw``."""
    h, w = hw
    kind = draw(st.sampled_from(["sr", "gauss", "motion", "kernel", "inpaint", "denoise"]))
    if kind == "sr":
        factors = [f for f in range(1, 5) if h % f == 0 and w % f == 0]
        return SuperResolution(draw(st.sampled_from(factors)), draw(st.sampled_from(["bicubic", "box", "gaussian"])))
    if kind == "gauss":
        return GaussianBlur(draw(st.floats(0.2, 6.0)))
    if kind == "motion":
        return MotionBlur(draw(st.floats(0.3, 12.0)), draw(st.floats(-360.0, 360.0)))
    if kind == "kernel":
        shape = draw(st.tuples(st.integers(1, 9), st.integers(1, 9)))
        kernel = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 10.0)))
        assume(kernel.sum() > 1e-6)
        return KernelBlur(kernel)
    if kind == "inpaint":
        mask = draw(hnp.arrays(np.bool_, (h, w)))
        assume(mask.any() and not mask.all())
        return Inpainting(mask)
    return Denoising()


@st.composite
def operator_cases(draw):
    h, w = draw(st.integers(2, 20)), draw(st.integers(2, 20))
    batch, channels = draw(st.integers(1, 2)), draw(st.sampled_from([1, 3]))
    return draw(operators((h, w))), (batch, channels, h, w), draw(st.integers(0, 2**31 - 1))


@FUZZ
@given(operator_cases())
def test_operators_are_adjoint_for_random_shapes_and_parameters(case):
    operator, shape, seed = case
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    ax = operator.forward(x)
    assert tuple(ax.shape) == (*shape[:2], *operator.measurement_hw(shape[-2:]))
    y = torch.randn(ax.shape, generator=generator, dtype=torch.float64)
    aty = operator.adjoint(y)
    assert aty.shape == x.shape
    lhs, rhs = float((ax * y).sum()), float((x * aty).sum())
    assert abs(lhs - rhs) <= 1e-9 * max(1.0, abs(lhs), abs(rhs))
    assert operator.image_hw(operator.measurement_hw(shape[-2:])) == shape[-2:]


@FUZZ
@given(operator_cases(), st.sampled_from([torch.float32, torch.float64]))
def test_operators_keep_dtype_and_stay_finite(case, dtype):
    operator, shape, seed = case
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)
    y = operator.forward(x)
    assert y.dtype == dtype and operator.adjoint(y).dtype == dtype
    assert torch.isfinite(y).all()
    if not isinstance(operator, Inpainting):  # every other operator here preserves the mean (mass) of a constant
        constant = torch.full(shape, 2.5, dtype=torch.float64)
        assert torch.allclose(operator.forward(constant), torch.tensor(2.5, dtype=torch.float64))


@FUZZ
@given(st.floats(1e-3, 50.0), st.floats(-720.0, 720.0))
def test_operator_repr_rebuilds_the_same_operator(length, angle):
    from napari_treg import operators as ops

    for operator in (GaussianBlur(length), MotionBlur(length, angle)):
        rebuilt = eval(repr(operator), vars(ops))  # noqa: S307 - our own repr
        assert repr(rebuilt) == repr(operator)


# ------------------------------------------------------------------------------ intensity normalisation

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.float16, np.float32, np.float64]


@st.composite
def intensity_arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    if dtype.kind == "f":
        limit = 1024.0 if dtype.itemsize == 2 else 2.0**40  # exactly representable at each width
        elements = st.floats(-limit, limit, allow_nan=False, allow_infinity=False, width=8 * dtype.itemsize)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    return draw(hnp.arrays(dtype, shape, elements=elements))


@FUZZ
@given(intensity_arrays())
@example(values=np.array([0.0, 1e-45], dtype=np.float32))  # a range whose inverse overflows float32
def test_intensity_scaling_round_trips(values):
    planes = values.astype(np.float32)
    scale = IntensityScale.from_data(planes)
    assert scale.high > scale.low
    model = scale.to_model(planes)
    assert model.dtype == np.float32 and np.isfinite(model).all()
    back = scale.from_model(model)
    span = scale.high - scale.low
    np.testing.assert_allclose(back, planes, rtol=1e-5, atol=1e-5 * span)
    if np.ptp(planes) == 0:  # a constant image maps to 0, never NaN
        np.testing.assert_allclose(model, 0.0, atol=1e-4)


# ------------------------------------------------------------------------------ restore / degrade input validation

VALID_DTYPES = [np.uint8, np.uint16, np.int32, np.int64, np.float16, np.float32, np.float64]
INPUT_DTYPES = [*VALID_DTYPES, np.bool_, np.complex64]


@st.composite
def any_images(draw, plausible: bool | None = None) -> np.ndarray:
    """Images of random rank, size and dtype: plausible ones, or often invalid (empty, 1D, NaN, bool, 7D ...)."""
    if plausible is None:
        plausible = draw(st.booleans())
    ndim = draw(st.integers(2, 4) if plausible else st.integers(0, 7))
    sides = st.integers(8, 12) if plausible else st.integers(0, 12)
    plane = [draw(sides) for _ in range(min(ndim, 2))]
    leading = [draw(st.sampled_from([1, 2] if plausible else [1, 2, 0])) for _ in range(ndim - len(plane))]
    shape = tuple(leading + plane)
    if ndim >= 3 and draw(st.booleans()):  # an RGB image
        shape = (*leading[1:], *plane, 3)  # same rank, last axis colour
    dtype = np.dtype(draw(st.sampled_from(VALID_DTYPES if plausible else INPUT_DTYPES)))
    if dtype.kind == "f":
        limit = 2.0**15 if dtype.itemsize == 2 else 2.0**20
        finite = st.floats(-limit, limit, width=8 * dtype.itemsize)
        special = st.sampled_from([np.nan, np.inf, -np.inf]) if not plausible else finite
        return draw(hnp.arrays(dtype, shape, elements=finite | special))
    return draw(hnp.arrays(dtype, shape))


def _planes_ok(image: np.ndarray) -> bool:
    return image.size < 600


def _analytic():
    analytic = pytest.importorskip("napari_treg.models.analytic")
    return analytic.AnalyticPrior()


def _check_restore(image: np.ndarray, operator: LinearOperator, prior) -> None:
    """Either a finite float32 result of the right shape or an InvalidInputError; nothing else."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = restore(image, operator, model=prior, steps=1, dc_every=1, negation_steps=1)
    except InvalidInputError as error:
        assert str(error)
        event("refused")
        return
    event("restored")
    assert result.dtype == np.float32 and np.isfinite(result).all()
    expected = list(np.shape(image))
    if expected[-1] == 4 and image.ndim >= 3:  # RGBA comes back as RGB
        expected[-1] = 3
    factor = getattr(operator, "factor", 1)
    rgb = image.ndim >= 3 and image.shape[-1] in (3, 4)
    axes = (-3, -2) if rgb else (-2, -1)
    for axis in axes:
        expected[axis] *= factor
    assert list(result.shape) == expected


@TINY_RUNS
@given(any_images(plausible=True), st.sampled_from([1, 2]))
def test_restore_tiny_plausible_images(tiny, image, factor):
    assume(_planes_ok(image))
    operator = SuperResolution(factor) if factor > 1 else Denoising()
    _check_restore(image, operator, tiny)


@TINY_RUNS
@given(any_images(plausible=False))
def test_restore_tiny_either_works_or_says_why(tiny, image):
    assume(_planes_ok(image))
    _check_restore(image, Denoising(), tiny)


@RUNS
@given(any_images())
def test_restore_analytic_either_works_or_says_why(image):
    assume(_planes_ok(image))
    _check_restore(image, Denoising(), _analytic())


@RUNS
@given(any_images(), st.sampled_from(["gauss", "sr"]))
def test_degrade_either_works_or_says_why(image, kind):
    assume(_planes_ok(image))
    operator = GaussianBlur(1.0) if kind == "gauss" else SuperResolution(2)
    try:
        result = degrade(image, operator, noise=0.01)
    except InvalidInputError as error:
        assert str(error)
        return
    assert result.dtype == np.float32 and np.isfinite(result).all()
