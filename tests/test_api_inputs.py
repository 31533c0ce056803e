"""Bad input to restore/degrade (images, parameters, sizes) gets a clear error; inputs are never modified.

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from napari_treg import degrade, restore
from napari_treg.cli import commands as cli
from napari_treg.errors import (
    InvalidInputError,
    ModelNotFoundError,
)
from napari_treg.operators import Denoising, GaussianBlur, Inpainting, KernelBlur, MotionBlur, SuperResolution

os.environ.setdefault("HF_HUB_OFFLINE", "1")


QUICK = dict(steps=2, dc_every=1, dc_until=1.0, negation_steps=1)


def _mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 3  # a label > 0 = missing
    return mask


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ bad input: images

BAD_IMAGES = {
    "empty (0, 5)": (np.zeros((0, 5)), "0x5 pixels"),
    "empty stack": (np.zeros((0, 8, 8)), "empty"),
    "one pixel": (np.zeros((1, 1)), "at least 2x2"),
    "one row": (np.zeros((1, 16)), "at least 2x2"),
    "0-d": (np.float32(3.0), "at least 2D"),
    "1D": (np.arange(16.0), "at least 2D"),
    "7D": (np.zeros((1, 1, 1, 1, 1, 8, 8)), "at most 5 stack"),
    "a path string": ("image.tif", "numeric"),
    "strings": (np.array([["a", "b"], ["c", "d"]]), "numeric"),
    "objects": (np.array([[object(), object()]] * 2), "numeric"),
    "None": (None, "numeric"),
    "ragged list": ([[1, 2, 3], [4]], "cannot be read as an array"),
    "boolean": (np.ones((8, 8), bool), "boolean"),
    "complex": (np.ones((8, 8), np.complex64), "np.abs"),
    "NaN": (np.where(np.eye(8) > 0, np.nan, 1.0), "nan_to_num"),
    "inf": (np.full((8, 8), -np.inf, np.float32), "nan_to_num"),
    "huge float64": (np.full((8, 8), 1e300), "rescale"),
    "rgb=True on grey": (np.zeros((8, 8)), "3 or 4 channels"),
}


@pytest.mark.parametrize("name", BAD_IMAGES)
@pytest.mark.parametrize("function", ["restore", "degrade"])
@pytest.mark.issue6
def test_bad_images_name_the_problem(tiny, function, name):
    image, message = BAD_IMAGES[name]
    rgb = True if name.startswith("rgb=True") else None
    with pytest.raises(InvalidInputError, match=message):
        if function == "restore":
            restore(image, Denoising(), model=tiny, steps=1, rgb=rgb)
        else:
            degrade(image, Denoising(), rgb=rgb)


@pytest.mark.parametrize(
    "image",
    [
        np.full((16, 16), 2**62, np.int64),  # +-1 vanishes in float rounding at this size
        np.full((16, 16), 0.0, np.float64),
        np.full((16, 16, 3), 255, np.uint8),
        np.full((2, 16, 16), 1e29, np.float32),
    ],
    ids=["int64 2**62", "zeros", "white rgb", "1e29 stack"],
)
@pytest.mark.issue6
def test_constant_images_give_finite_results(tiny, image):
    measured = degrade(image, GaussianBlur(1.0), noise=0)
    np.testing.assert_allclose(measured, image.astype(np.float64), rtol=1e-6)
    result = restore(image, Denoising(), model=tiny, steps=1)
    assert result.shape == image.shape and np.isfinite(result).all()


@pytest.mark.issue6
def test_six_dimensional_stacks_are_restored_plane_by_plane(tiny):
    image = np.random.default_rng(0).random((1, 2, 1, 1, 8, 8)).astype(np.float32)
    assert restore(image, Denoising(), model=tiny, steps=1).shape == image.shape


# ------------------------------------------------------------------------------ bad input: parameters


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(steps=1001), "at most 1000"),
        (dict(steps="10"), "whole number"),
        (dict(guidance=float("inf")), "finite"),
        (dict(guidance="high"), "number"),
        (dict(dc_every=-1), "dc_every"),
        (dict(negation_lr=float("nan")), "negation_lr"),
        (dict(cg_iterations=-2), "cg_iterations"),
        (dict(seed=-1), "seed"),
        (dict(seed=1.5), "whole number"),
        (dict(device="tpu"), "unknown device 'tpu'; valid devices"),
        (dict(dtype="int8"), "unsupported dtype"),
        (dict(model=42), "model must be"),
    ],
)
@pytest.mark.issue6
def test_bad_parameters_name_the_problem_and_the_choices(kwargs, message):
    kwargs = {"model": "tiny", "device": "cpu", **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        restore(np.zeros((16, 16)), Denoising(), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.issue6
def test_cuda_without_a_gpu_says_to_use_cpu():
    with pytest.raises(InvalidInputError, match="CUDA is not available.*'cpu'"):
        restore(np.zeros((16, 16)), Denoising(), model="tiny", device="cuda")


@pytest.mark.parametrize(
    "model, message",
    [
        ("no-such-model", "unknown model 'no-such-model': give one of sd15, tiny"),
        ("./nowhere/model.safetensors", "does not exist"),
    ],
)
@pytest.mark.issue6
def test_unknown_models_are_named(model, message):
    with pytest.raises(ModelNotFoundError, match=message):
        restore(np.zeros((16, 16)), Denoising(), model=model, device="cpu", steps=1)


@pytest.mark.issue6
def test_over_long_prompts_warn_and_are_truncated(tiny):
    image = np.random.default_rng(3).random((16, 16)).astype(np.float32)
    long = "cells" * 40  # one token per byte in the tiny tokenizer: 200 + 2 tokens
    with pytest.warns(UserWarning, match=r"longer than the text encoder's 77 tokens.*125 token\(s\) were dropped"):
        result = restore(image, Denoising(), model=tiny, steps=1, prompt=long)
    assert np.isfinite(result).all()
    # truncated means: only the first 77 tokens (75 + start and end) count
    cut = restore(image, Denoising(), model=tiny, steps=1, prompt=long[:75])
    with pytest.warns(UserWarning, match="77 tokens"):
        again = restore(image, Denoising(), model=tiny, steps=1, prompt=long[:75] + " an ignored tail")
    np.testing.assert_array_equal(cut, again)


# ------------------------------------------------------------------------------ nothing lost


def _inputs(hw: tuple[int, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(6)
    h, w = hw
    return {
        "uint8 grey": rng.integers(0, 256, (h, w)).astype(np.uint8),
        "uint16 grey": rng.integers(0, 65536, (h, w)).astype(np.uint16),
        "float32 rgb": rng.random((h, w, 3)).astype(np.float32),
        "float64 stack": rng.random((2, h, w)) * 1000,
    }


OPERATORS = {
    "sr": lambda hw: SuperResolution(2),
    "gauss": lambda hw: GaussianBlur(1.0),
    "motion": lambda hw: MotionBlur(3, 45),
    "kernel": lambda hw: KernelBlur(np.ones((3, 3), np.float32)),
    "inpaint": lambda hw: Inpainting(_mask(*hw)),
    "denoise": lambda hw: Denoising(),
}


@pytest.mark.parametrize("kind", ["uint8 grey", "uint16 grey", "float32 rgb", "float64 stack"])
@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.issue6
def test_inputs_are_never_modified_and_read_only_inputs_work(tiny, name, kind):
    image = _inputs((16, 16))[kind]
    image.flags.writeable = False
    before = image.copy()
    operator = OPERATORS[name]((16, 16))
    measured = degrade(image, operator)
    measured.flags.writeable = False
    measured_before = measured.copy()
    result = restore(measured, operator, model=tiny, steps=1, dc_every=1, dc_until=1.0, negation_steps=1)
    np.testing.assert_array_equal(image, before)
    np.testing.assert_array_equal(measured, measured_before)
    assert not image.flags.writeable and image.dtype == before.dtype
    assert result.shape == image.shape and result.dtype == np.float32 and np.isfinite(result).all()


@pytest.mark.issue6
def test_operator_data_is_not_modified_by_a_run(tiny):
    mask, kernel = _mask(16, 16), np.ones((5, 3))
    mask.flags.writeable = kernel.flags.writeable = False
    copies = mask.copy(), kernel.copy()
    image = np.random.default_rng(7).random((16, 16))
    for operator in (Inpainting(mask), KernelBlur(kernel)):
        restore(degrade(image, operator), operator, model=tiny, **QUICK)
    np.testing.assert_array_equal(mask, copies[0])
    np.testing.assert_array_equal(kernel, copies[1])


@pytest.mark.issue6
def test_torch_tensor_inputs_are_not_modified(tiny):
    tensor = torch.rand(16, 16)
    before = tensor.clone()
    restore(tensor, Denoising(), model=tiny, steps=1)
    degrade(tensor, GaussianBlur(1))
    assert torch.equal(tensor, before)


# ------------------------------------------------------------------------------ sizes and inputs refused up front


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SuperResolution(10**9), "at most 32"),
        (lambda: GaussianBlur(1e6), "8000001-pixel kernel; at most 1025"),
        (lambda: GaussianBlur(1.0, size=10**7 + 1), "at most 1025"),
        (lambda: MotionBlur(1e9), "at most 1025"),
        (lambda: KernelBlur(np.ones((2000, 1))), "2000x1-pixel kernel; at most 1025"),
    ],
)
@pytest.mark.issue12
def test_sizes_that_would_exhaust_memory_are_refused_at_once(make, message):
    started = time.perf_counter()
    with pytest.raises(InvalidInputError, match=message):
        make()
    assert time.perf_counter() - started < 1.0  # refused before allocating anything large


@pytest.mark.issue12
def test_largest_allowed_sizes_work():
    assert GaussianBlur(128).size == 1025 and MotionBlur(1024).kernel.shape == (1025, 1025)
    assert SuperResolution(32).factor == 32


@pytest.mark.issue12
def test_an_image_smaller_than_the_factor_gets_a_sensible_message():
    with pytest.raises(InvalidInputError, match="2x2 is smaller than the super-resolution factor 4") as caught:
        degrade(np.zeros((2, 2)), SuperResolution(4))
    assert "0x0" not in str(caught.value)


@pytest.mark.parametrize("function", ["restore", "degrade"])
@pytest.mark.issue12
def test_a_huge_outlier_pixel_says_what_to_do(tiny, function):
    image = np.zeros((64, 64))
    image[3, 3] = 1e25  # within the documented 1e30 limit, far outside the 0.1-99.9 percentile range
    with pytest.raises(InvalidInputError, match="far outside its intensity range.*np.clip") as caught:
        if function == "restore":
            restore(image, Denoising(), model=tiny, steps=2)
        else:
            degrade(image, GaussianBlur(1.0))
    assert "float32" not in str(caught.value)


@pytest.mark.parametrize("function", ["restore", "degrade"])
@pytest.mark.issue12
def test_masked_arrays_are_refused_not_silently_unmasked(tiny, function):
    data = np.random.default_rng(3).random((16, 16))
    masked = np.ma.masked_array(data, mask=data > 0.9)
    with pytest.raises(InvalidInputError, match="masked array.*Inpainting"):
        if function == "restore":
            restore(masked, Denoising(), model=tiny, steps=1)
        else:
            degrade(masked, Denoising())
    unmasked = np.ma.masked_array(data)  # nothing masked: nothing lost, so it works
    np.testing.assert_array_equal(degrade(unmasked, Denoising(), noise=0), degrade(data, Denoising(), noise=0))


@pytest.mark.parametrize("function", ["restore", "degrade"])
@pytest.mark.issue12
def test_torch_tensors_numpy_cannot_hold_are_invalid_input(tiny, function):
    tensor = torch.rand(16, 16, dtype=torch.bfloat16)
    with pytest.raises(InvalidInputError, match=r"bfloat16.*\.float\(\)"):
        if function == "restore":
            restore(tensor, Denoising(), model=tiny, steps=1)
        else:
            degrade(tensor, Denoising())


@pytest.mark.issue12
def test_cli_mask_with_nan_is_refused_like_the_api(tmp_path, capsys):
    mask = np.zeros((16, 16))
    mask[2:5, 2:5] = 1
    mask[0, 0] = np.nan
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    with pytest.raises(InvalidInputError, match="NaN"):
        Inpainting(mask)
    argv = [
        "degrade",
        str(tmp_path / "in.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--operator",
        "inpaint",
        "--mask",
        str(tmp_path / "mask.npy"),
        "-q",
    ]
    assert cli.main(argv) == 2
    assert "NaN" in _one_line(capsys)
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: KernelBlur(torch.ones(3, 3, dtype=torch.bfloat16)), "kernel is a torch tensor of dtype torch.bfloat"),
        (lambda: Inpainting(torch.eye(4, dtype=torch.bfloat16)), "mask is a torch tensor of dtype torch.bfloat16"),
        (lambda: KernelBlur(np.ma.masked_array(np.ones((3, 3)), mask=np.eye(3) > 0)), "masked array with 3"),
        (lambda: Inpainting(np.ma.masked_array(np.eye(4), mask=np.eye(4) > 0)), "masked array with 4"),
    ],
)
@pytest.mark.issue12
def test_operator_data_numpy_cannot_hold_or_with_a_mask_is_refused(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()
