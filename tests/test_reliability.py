"""Reliability (issue 6): bad input gets a clear error, faults are survived, nothing is lost.

What tests/test_api.py, test_operators.py, test_models.py and test_cli.py already cover is
not repeated here; see docs/reliability.md for the full list and where each item is tested.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from napari_treg import api, cli, degrade, io, memory, restore
from napari_treg import operators as ops
from napari_treg.errors import (
    Cancelled,
    DivergenceError,
    InvalidInputError,
    ModelNotFoundError,
    OutOfMemoryError,
    TRegError,
)
from napari_treg.models.tiny import build_tiny_prior
from napari_treg.operators import Denoising, GaussianBlur, Inpainting, KernelBlur, MotionBlur, SuperResolution
from napari_treg.solver.divergence import check_finite

os.environ.setdefault("HF_HUB_OFFLINE", "1")

QUICK = dict(steps=2, dc_every=1, dc_until=1.0, negation_steps=1)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_prior(seed=0)


def _mask(h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4 : h // 2, w // 4 : w // 2] = 3  # a label > 0 = missing
    return mask


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
def test_constant_images_give_finite_results(tiny, image):
    measured = degrade(image, GaussianBlur(1.0), noise=0)
    np.testing.assert_allclose(measured, image.astype(np.float64), rtol=1e-6)
    result = restore(image, Denoising(), model=tiny, steps=1)
    assert result.shape == image.shape and np.isfinite(result).all()


def test_six_dimensional_stacks_are_restored_plane_by_plane(tiny):
    image = np.random.default_rng(0).random((1, 2, 1, 1, 8, 8)).astype(np.float32)
    assert restore(image, Denoising(), model=tiny, steps=1).shape == image.shape


# ------------------------------------------------------------------------------ bad input: masks, kernels, operators


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Inpainting(np.full((4, 4), np.nan)), "NaN"),
        (lambda: Inpainting(np.array([["a", "b"]] * 2)), "boolean or labels"),
        (lambda: Inpainting(np.zeros((4, 4, 3)) + np.eye(4)[..., None]), "2D"),
        (lambda: KernelBlur(np.full((3, 3), np.inf)), "NaN or infinite"),
        (lambda: KernelBlur(np.zeros((0, 3))), "2D"),
        (lambda: KernelBlur(np.ones((3, 3), complex)), "real numeric"),
        (lambda: KernelBlur(np.array([[1.0, -0.1, 1.0]])), "clip at 0"),
        (lambda: MotionBlur(-3), "positive"),
        (lambda: MotionBlur(5, angle=float("nan")), "angle"),
        (lambda: GaussianBlur(float("inf")), "finite"),
        (lambda: GaussianBlur(0), "positive"),
        (lambda: SuperResolution("two"), "number"),
        (lambda: SuperResolution(float("nan")), "factor"),
    ],
)
def test_bad_operator_parameters_name_the_problem(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()


def test_masks_with_extra_axes_and_labels_work():
    labels = _mask(16, 16).astype(np.uint32)[None, None]
    assert Inpainting(labels).missing.shape == (16, 16)


@pytest.mark.parametrize("function", ["restore", "degrade"])
def test_mask_of_the_wrong_shape_names_both_shapes(tiny, function):
    operator = Inpainting(_mask(8, 8))
    with pytest.raises(InvalidInputError, match="mask is 8x8 but the image is 16x16"):
        if function == "restore":
            restore(np.zeros((16, 16)), operator, model=tiny, steps=1)
        else:
            degrade(np.zeros((16, 16)), operator)


def test_kernels_larger_than_the_image_work(tiny):
    """Mirror boundary, repeated periodically: a 41x41 PSF on a 12x12 image is fine."""
    image = np.random.default_rng(1).random((12, 12)).astype(np.float32)
    operator = KernelBlur(np.ones((41, 41)))
    blurred = degrade(image, operator, noise=0)
    assert blurred.shape == image.shape and np.isfinite(blurred).all()
    np.testing.assert_allclose(degrade(np.full((12, 12), 3.0), operator, noise=0), 3.0, rtol=1e-6)
    result = restore(blurred, operator, model=tiny, **QUICK)
    assert result.shape == image.shape and np.isfinite(result).all()


def test_degrade_refuses_sizes_not_divisible_by_the_factor():
    with pytest.raises(InvalidInputError, match="not divisible .* crop it to 28x32"):
        degrade(np.zeros((30, 32)), SuperResolution(4))


def test_restore_takes_any_measurement_size_for_super_resolution(tiny):
    result = restore(np.random.default_rng(2).random((5, 7)), SuperResolution(3), model=tiny, steps=1)
    assert result.shape == (15, 21)


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
def test_bad_parameters_name_the_problem_and_the_choices(kwargs, message):
    kwargs = {"model": "tiny", "device": "cpu", **kwargs}
    with pytest.raises(InvalidInputError, match=message):
        restore(np.zeros((16, 16)), Denoising(), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
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
def test_unknown_models_are_named(model, message):
    with pytest.raises(ModelNotFoundError, match=message):
        restore(np.zeros((16, 16)), Denoising(), model=model, device="cpu", steps=1)


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


# ------------------------------------------------------------------------------ CLI: one line, non-zero exit


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


BAD_FILES = {
    "nan.npy": np.where(np.eye(16) > 0, np.nan, 1.0),
    "empty.npy": np.zeros((0, 5)),
    "line.npy": np.arange(16.0),
    "bool.npy": np.ones((16, 16), bool),
    "complex.npy": np.ones((16, 16), complex),
    "pixel.npy": np.ones((1, 1)),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_cli_bad_images_are_one_line_exit_2(tmp_path, capsys, name):
    np.save(tmp_path / name, BAD_FILES[name])
    code = cli.main(["degrade", str(tmp_path / name), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", "-q"])
    assert code == 2
    line = _one_line(capsys)
    assert line.startswith("napari-treg: error: ") and "image" in line
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize(
    "extra, code",
    [
        (["--operator", "kernel", "--kernel", "{tmp}/nan_kernel.npy"], 2),
        (["--operator", "denoise", "--device", "tpu"], 2),
        (["--operator", "denoise", "--model", "no-such-model"], 1),
        (["--operator", "denoise", "--guidance", "nan"], 2),
        (["--operator", "denoise", "--steps", "0"], 2),
    ],
)
def test_cli_bad_parameters_are_one_line(tmp_path, capsys, extra, code):
    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((16, 16)))
    np.save(tmp_path / "nan_kernel.npy", np.full((3, 3), np.nan))
    argv = ["restore", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "-q", "--steps", "1"]
    argv += [arg.format(tmp=tmp_path) for arg in extra]
    assert cli.main(argv) == code
    _one_line(capsys)
    assert not (tmp_path / "o.npy").exists()


@pytest.mark.parametrize(
    "error, code",
    [
        (OutOfMemoryError("out of memory (CUDA). try a smaller batch_size"), 1),
        (DivergenceError("the sampler diverged (NaN or inf) at step 3 of 4"), 1),
        (Cancelled("cancelled"), 130),
        (KeyboardInterrupt(), 130),
    ],
)
def test_cli_faults_are_one_line_and_leave_no_file(tmp_path, capsys, monkeypatch, error, code):
    def failing_load(model, device, dtype):
        raise error

    monkeypatch.setattr(api, "_load", failing_load)
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    argv = ["restore", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", "-q"]
    assert cli.main(argv) == code
    _one_line(capsys)
    assert list(tmp_path.iterdir()) == [tmp_path / "in.npy"]


# ------------------------------------------------------------------------------ faults: out of memory


class _FailOnce:
    """Wraps ``prior.predict_noise``: the first call raises ``error``, later calls work."""

    def __init__(self, prior, error: BaseException):
        self.original = prior.predict_noise
        self.error: BaseException | None = error
        self.seen: list[weakref.ref] = []

    def __call__(self, z, t, text):
        if self.error is not None:
            error, self.error = self.error, None
            self.seen.append(weakref.ref(z))
            raise type(error)(*error.args)  # a fresh one: the template keeps no traceback
        return self.original(z, t, text)


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
        RuntimeError("CUDA error: out of memory"),
    ],
    ids=["cuda", "mps", "runtime"],
)
def test_out_of_memory_is_clear_releases_memory_and_a_retry_works(tiny, monkeypatch, error):
    image = np.random.default_rng(4).random((16, 16)).astype(np.float32)
    expected = restore(image, Denoising(), model=tiny, **QUICK)
    freed = []
    monkeypatch.setattr(memory, "free_accelerator_memory", lambda: freed.append(gc.collect()))
    fail = _FailOnce(tiny, error)
    monkeypatch.setattr(tiny, "predict_noise", fail)
    with pytest.raises(OutOfMemoryError) as caught:
        restore(image, Denoising(), model=tiny, **QUICK)
    assert isinstance(caught.value, MemoryError) and isinstance(caught.value, TRegError)
    message = str(caught.value)
    assert all(word in message for word in ("batch_size", "low-memory", "tiling", "device='cpu'"))
    assert caught.value.__context__ is None and caught.value.__cause__ is None  # no traceback keeps tensors
    assert freed, "memory was not released"
    assert fail.seen[0]() is None, "the failed run's latents are still referenced"
    np.testing.assert_array_equal(restore(image, Denoising(), model=tiny, **QUICK), expected)


def test_out_of_memory_while_loading_is_clear(monkeypatch):
    def failing_load(model, device, dtype):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory while loading")

    monkeypatch.setattr(api, "_load", failing_load)
    with pytest.raises(OutOfMemoryError, match="device='cpu'"):
        restore(np.zeros((16, 16)), Denoising(), model="sd15")


def test_other_runtime_errors_pass_through_unchanged(tiny, monkeypatch):
    def broken(z, t, text):
        raise RuntimeError("shape mismatch in attention")

    monkeypatch.setattr(tiny, "predict_noise", broken)
    with pytest.raises(RuntimeError, match="shape mismatch") as caught:
        restore(np.zeros((16, 16)), Denoising(), model=tiny, steps=1)
    assert not isinstance(caught.value, OutOfMemoryError)


# ------------------------------------------------------------------------------ faults: divergence


def test_nan_noise_prediction_stops_the_run_at_the_step_it_appears(tiny, monkeypatch):
    calls, steps = [], []
    original = tiny.predict_noise

    def nan_after_three(z, t, text):
        calls.append(t)
        eps = original(z, t, text)
        return eps * float("nan") if len(calls) > 3 else eps

    monkeypatch.setattr(tiny, "predict_noise", nan_after_three)
    with pytest.raises(DivergenceError, match=r"diverged \(NaN or inf\) at step 4 of 30.*float32"):
        restore(
            np.zeros((16, 16)),
            Denoising(),
            model=tiny,
            steps=30,
            dc_every=0,
            progress=lambda step, total, preview=None: steps.append(step),
        )
    assert steps == [1, 2, 3]  # on the CPU the check is free, so every step is checked; nothing returned


class _NanOperator(ops.LinearOperator):
    """An operator whose normal equations produce NaN: the CG must not hide it."""

    def forward(self, x):
        return x * float("nan")

    adjoint = forward

    def __repr__(self) -> str:
        return "NanOperator()"


def test_nan_in_the_conjugate_gradient_is_detected_at_the_dc_step(tiny):
    with pytest.raises(DivergenceError, match="step 1 of 4"):
        restore(np.ones((16, 16)), _NanOperator(), model=tiny, steps=4, dc_every=1, dc_until=1.0)
    # and the next run is fine
    assert np.isfinite(restore(np.ones((16, 16)), Denoising(), model=tiny, steps=1)).all()


# ------------------------------------------------------------------------------ faults: cancel


def test_cancel_during_model_loading_returns_nothing_and_the_next_run_works(tiny, monkeypatch):
    event = threading.Event()

    def slow_load(model, device, dtype):
        event.set()  # the user presses Cancel while the weights load
        return tiny

    monkeypatch.setattr(api, "_load", slow_load)
    progress = []
    with pytest.raises(Cancelled, match="nothing was returned"):
        restore(
            np.zeros((16, 16)),
            Denoising(),
            model="sd15",
            cancel=event,
            progress=lambda *args, **kwargs: progress.append(args),
        )
    assert progress == []  # no sampling step ran
    result = restore(np.zeros((16, 16)), Denoising(), model="sd15", cancel=threading.Event(), steps=2)
    assert result.shape == (16, 16)


@pytest.mark.parametrize("at_step", [1, 3])
def test_cancel_at_any_step_then_a_clean_rerun(tiny, at_step):
    image = np.random.default_rng(5).random((16, 16)).astype(np.float32)
    expected = restore(image, Denoising(), model=tiny, steps=3)
    event = threading.Event()

    def progress(step, total, preview=None):
        if step == at_step:
            event.set()

    with pytest.raises(Cancelled):
        restore(image, Denoising(), model=tiny, steps=3, progress=progress, cancel=event)
    np.testing.assert_array_equal(restore(image, Denoising(), model=tiny, steps=3), expected)


def test_cli_interrupt_during_model_loading_leaves_no_file(tmp_path, capsys, monkeypatch):
    def interrupted(model, device, dtype):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "_load", interrupted)
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    code = cli.main(
        [
            "restore",
            str(tmp_path / "in.npy"),
            "-o",
            str(tmp_path / "o.tif"),
            "--operator",
            "denoise",
            "--info",
            str(tmp_path / "o.json"),
            "-q",
        ]
    )
    assert code == 130 and "interrupted" in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


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


def test_operator_data_is_not_modified_by_a_run(tiny):
    mask, kernel = _mask(16, 16), np.ones((5, 3))
    mask.flags.writeable = kernel.flags.writeable = False
    copies = mask.copy(), kernel.copy()
    image = np.random.default_rng(7).random((16, 16))
    for operator in (Inpainting(mask), KernelBlur(kernel)):
        restore(degrade(image, operator), operator, model=tiny, **QUICK)
    np.testing.assert_array_equal(mask, copies[0])
    np.testing.assert_array_equal(kernel, copies[1])


def test_torch_tensor_inputs_are_not_modified(tiny):
    tensor = torch.rand(16, 16)
    before = tensor.clone()
    restore(tensor, Denoising(), model=tiny, steps=1)
    degrade(tensor, GaussianBlur(1))
    assert torch.equal(tensor, before)


# ------------------------------------------------------------------------------ provenance


def test_info_repeats_a_run_exactly(tiny):
    image = np.random.default_rng(8).integers(0, 255, (2, 12, 12)).astype(np.uint8)
    operator = GaussianBlur(1.2345678)
    first, info = restore(
        image,
        operator,
        model=tiny,
        prompt="cells",
        negative_prompt="blur",
        seed=11,
        batch_size=2,
        return_info=True,
        **QUICK,
    )
    json.loads(json.dumps(info))  # plain JSON: can be stored next to the result
    params = dict(info["params"])
    rebuilt = eval(params.pop("operator"), vars(ops))  # noqa: S307 - our own repr
    assert repr(rebuilt) == repr(operator)
    again = restore(image, rebuilt, model=tiny, dtype=info["dtype"], device=info["device"], **params)
    np.testing.assert_array_equal(first, again)
    assert info["model"] == tiny.name and info["test_model"] is True
    assert {"napari-treg", "torch", "diffusers", "transformers", "numpy"} <= set(info["versions"])


@pytest.mark.parametrize(
    "operator",
    [SuperResolution(3, "gaussian"), GaussianBlur(0.1 + 0.2), MotionBlur(7.25, -33.3), Denoising()],
)
def test_parametric_operators_round_trip_through_repr(operator):
    rebuilt = eval(repr(operator), vars(ops))  # noqa: S307
    x = torch.rand(1, 1, 12, 12, dtype=torch.float64)
    assert torch.equal(rebuilt.forward(x), operator.forward(x))


# ------------------------------------------------------------------------------ security


def test_no_socket_is_opened_offline(tiny, monkeypatch):
    """Offline, a missing hub model fails without touching the network; local models never do."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    restore(np.zeros((16, 16)), Denoising(), model="tiny", device="cpu", steps=1)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        restore(np.zeros((16, 16)), Denoising(), model="someone/some-model", device="cpu", steps=1)
    assert attempts == []


def test_loading_a_model_turns_telemetry_off(monkeypatch):
    import diffusers.utils.hub_utils as diffusers_hub
    from huggingface_hub import constants

    from napari_treg.models import load_model

    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("DISABLE_TELEMETRY", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(diffusers_hub, "HF_HUB_DISABLE_TELEMETRY", False)
    load_model("tiny", device="cpu")
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and os.environ["DISABLE_TELEMETRY"] == "1"
    assert constants.HF_HUB_DISABLE_TELEMETRY is True and diffusers_hub.HF_HUB_DISABLE_TELEMETRY is True


def test_safetensors_loading_reads_no_pickle(tmp_path, monkeypatch):
    """A .safetensors file is checked without torch.load (so without unpickling anything)."""
    from safetensors.torch import save_file

    from napari_treg.models import load_model

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load was called on a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickles)
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelNotFoundError, match="not a Stable Diffusion 1.x checkpoint"):
        load_model(tmp_path / "other.safetensors", device="cpu")


def test_io_reads_npy_without_pickle(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises((InvalidInputError, ValueError, OSError)):
        io.read_image(tmp_path / "objects.npy")


# ============================================================================== trust, round two (issue 12)
# One mechanism per class: the output guard (tests/test_outputs.py), the finiteness guard, the allocation
# recogniser, one line for every CLI failure, and sizes refused before anything is allocated.

PYTHON_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run_python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=PYTHON_ENV, timeout=timeout)


def _single_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# ------------------------------------------------------------------------------ results that are not numbers


@pytest.mark.parametrize(
    "values",
    [
        np.array([1.0, np.nan]),
        np.array([np.inf, 0.0], np.float32),
        torch.tensor([0.0, -float("inf")]),
        torch.tensor([1.0, float("nan")]).half(),
    ],
)
def test_check_finite_refuses_nan_and_inf_with_advice(values):
    with pytest.raises(DivergenceError, match="the result has 1 NaN or infinite value.*guidance"):
        check_finite(values, "the result")


def test_check_finite_accepts_finite_and_integer_results():
    check_finite(np.arange(4), "integers")
    check_finite(torch.ones(3), "ones")
    check_finite(np.zeros((0, 3)), "empty")


def test_degrade_with_absurd_noise_is_refused_not_inf():
    with pytest.raises(InvalidInputError, match="noise must be at most 100"):
        degrade(np.random.default_rng(0).random((8, 8)), Denoising(), noise=1e40)
    assert np.isfinite(degrade(np.full((8, 8), 1e30), Denoising(), noise=100)).all()  # the bound holds at 1e30


def test_a_kernel_whose_sum_overflows_is_refused():
    with pytest.raises(InvalidInputError, match="sum overflows.*divide it by its maximum"):
        KernelBlur(np.full((3, 3), 1e308))


def test_cli_never_writes_a_non_finite_result(tmp_path, capsys, monkeypatch):
    """The final decode gives NaN (no latent was bad): exit 1, one line, no file."""
    from napari_treg.models import load_model

    prior = load_model("tiny", device="cpu")  # the CLI gets this cached model
    decode = prior.decode
    monkeypatch.setattr(prior, "decode", lambda z: decode(z) * float("nan"))
    np.save(tmp_path / "in.npy", np.random.default_rng(1).random((16, 16)))
    argv = [
        "restore",
        str(tmp_path / "in.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--operator",
        "denoise",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--steps",
        "2",
        "--dc-every",
        "0",
        "-q",
    ]
    assert cli.main(argv) == 1
    assert "NaN or infinite" in _one_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


# ------------------------------------------------------------------------------ the allocation recogniser

ALLOCATION_FAILURES = {
    "numpy": (MemoryError("Unable to allocate 6.94 EiB for an array with shape (1000000001, 1000000001)"), "host"),
    "cpu": (
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 32000000000 bytes. Error code 12"
        ),
        "host",
    ),
    "windows": (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."), "host"),
    "cuda": (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "accelerator"),
    "cuda runtime": (RuntimeError("CUDA error: out of memory"), "accelerator"),
    "mps": (RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"), "accelerator"),
}


@pytest.mark.parametrize("name", ALLOCATION_FAILURES)
def test_allocation_failures_of_every_device_are_recognised(name):
    error, where = ALLOCATION_FAILURES[name]
    assert memory.allocation_failure(error) == where
    converted = memory.out_of_memory_error(error)
    assert isinstance(converted, OutOfMemoryError) and "\n" not in str(converted)
    assert str(converted).startswith(f"out of {'host' if where == 'host' else 'accelerator'} memory")


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch"), ValueError("out of memory"), OSError("disk")])
def test_other_errors_are_not_allocation_failures(error):
    assert memory.allocation_failure(error) is None


def test_a_cpu_allocation_failure_during_restore_is_out_of_memory(tiny, monkeypatch):
    error = ALLOCATION_FAILURES["cpu"][0]
    monkeypatch.setattr(tiny, "predict_noise", _FailOnce(tiny, error))
    with pytest.raises(OutOfMemoryError, match="out of host memory.*smaller image"):
        restore(np.zeros((16, 16)), Denoising(), model=tiny, **QUICK)


@pytest.mark.parametrize("name", ["numpy", "cpu"])
def test_cli_allocation_failures_are_one_line_exit_1(tmp_path, capsys, monkeypatch, name):
    error = ALLOCATION_FAILURES[name][0]

    def failing_degrade(*args, **kwargs):
        raise type(error)(*error.args)

    monkeypatch.setattr(api, "degrade", failing_degrade)
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    argv = ["degrade", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", "-q"]
    assert cli.main(argv) == 1
    assert _one_line(capsys).startswith("napari-treg: error: out of host memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS behaves like this on Linux")
def test_cli_under_a_host_memory_limit_is_one_line_exit_1(tmp_path):
    """A real allocation failure: factor-32 super-resolution with 300 MB of address space to spare."""
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((96, 96)).astype(np.float32))
    code = f"""
import resource, sys
import torch, numpy, napari_treg.api, napari_treg.cli as cli
from napari_treg.models import load_model
load_model("tiny", device="cpu")
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 300 * 2**20, resource.RLIM_INFINITY))
sys.exit(cli.main(["restore", r"{tmp_path}/in.npy", "-o", r"{tmp_path}/o.npy", "--operator", "sr",
                   "--factor", "32", "--model", "tiny", "--steps", "1", "--device", "cpu", "-q"]))
"""
    run = _run_python(code)
    assert run.returncode == 1, run.stderr
    assert _single_error_line(run.stderr).startswith("napari-treg: error: out of host memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


# ------------------------------------------------------------------------------ tracebacks -> one line


def test_importing_the_cli_does_not_load_torch():
    run = _run_python("import sys, napari_treg.cli; print('torch' in sys.modules)", timeout=60)
    assert run.stdout.strip() == "False", run.stderr


def test_ctrl_c_while_torch_imports_is_one_line_exit_130(tmp_path):
    """Ctrl-C in the first seconds, while torch loads: a KeyboardInterrupt raised by the import itself."""
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    code = f"""
import sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            raise KeyboardInterrupt
sys.meta_path.insert(0, Interrupt())
import napari_treg.cli as cli
sys.exit(cli.main(["degrade", r"{tmp_path}/in.npy", "-o", r"{tmp_path}/o.npy", "--operator", "denoise"]))
"""
    run = _run_python(code, timeout=60)
    assert run.returncode == 130
    assert "interrupted" in _single_error_line(run.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_a_real_sigint_during_startup_is_one_line_exit_130(tmp_path):
    import signal

    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    code = f"""
import sys, time
t = time.perf_counter()
import napari_treg.cli as cli
print("ready", flush=True)
sys.exit(cli.main(["degrade", r"{tmp_path}/in.npy", "-o", r"{tmp_path}/o.npy", "--operator", "denoise", "-q"]))
"""
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=PYTHON_ENV
    )
    assert process.stdout.readline().strip() == "ready"  # main() is about to import torch (seconds)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "interrupted" in _single_error_line(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, "
        b"'shape': (16, 16), }" + b" " * 50 + b"\n" + b"\x00" * 64,
    ],
)
def test_cli_empty_and_truncated_npy_inputs_are_one_line_exit_2(tmp_path, capsys, content):
    (tmp_path / "in.npy").write_bytes(content)
    argv = ["degrade", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", "-q"]
    assert cli.main(argv) == 2
    assert "cannot read" in _one_line(capsys)


def test_a_model_path_in_a_symlink_loop_is_one_line_exit_1(tmp_path, capsys):
    (tmp_path / "a.safetensors").symlink_to(tmp_path / "b.safetensors")
    (tmp_path / "b.safetensors").symlink_to(tmp_path / "a.safetensors")
    with pytest.raises(ModelNotFoundError, match="symlink loop"):
        restore(np.zeros((16, 16)), Denoising(), model=str(tmp_path / "a.safetensors"), steps=1)
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    argv = [
        "restore",
        str(tmp_path / "in.npy"),
        "-o",
        str(tmp_path / "o.npy"),
        "--operator",
        "denoise",
        "--model",
        str(tmp_path / "a.safetensors"),
        "--steps",
        "1",
        "-q",
    ]
    assert cli.main(argv) == 1
    assert "symlink loop" in _one_line(capsys)


def test_demo_without_a_display_is_one_line_exit_1(capsys, monkeypatch):
    from napari_treg.plugin import demo

    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(demo.sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "napari", None)  # Qt must not even be imported
    assert cli.main(["demo"]) == 1
    assert "xvfb-run" in _one_line(capsys)


@pytest.mark.parametrize(
    "environ, platform, refused",
    [
        ({}, "linux", True),
        ({"DISPLAY": ":0"}, "linux", False),
        ({"WAYLAND_DISPLAY": "wayland-0"}, "linux", False),
        ({"QT_QPA_PLATFORM": "offscreen"}, "linux", False),
        ({"QT_QPA_PLATFORM": "xcb"}, "linux", True),
        ({}, "darwin", False),
        ({}, "win32", False),
    ],
)
def test_check_display(environ, platform, refused):
    from napari_treg.plugin.demo import check_display

    if refused:
        with pytest.raises(TRegError, match="no display"):
            check_display(environ, platform)
    else:
        check_display(environ, platform)


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
def test_sizes_that_would_exhaust_memory_are_refused_at_once(make, message):
    started = time.perf_counter()
    with pytest.raises(InvalidInputError, match=message):
        make()
    assert time.perf_counter() - started < 1.0  # refused before allocating anything large


def test_largest_allowed_sizes_work():
    assert GaussianBlur(128).size == 1025 and MotionBlur(1024).kernel.shape == (1025, 1025)
    assert SuperResolution(32).factor == 32


def test_an_image_smaller_than_the_factor_gets_a_sensible_message():
    with pytest.raises(InvalidInputError, match="2x2 is smaller than the super-resolution factor 4") as caught:
        degrade(np.zeros((2, 2)), SuperResolution(4))
    assert "0x0" not in str(caught.value)


@pytest.mark.parametrize("function", ["restore", "degrade"])
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
def test_torch_tensors_numpy_cannot_hold_are_invalid_input(tiny, function):
    tensor = torch.rand(16, 16, dtype=torch.bfloat16)
    with pytest.raises(InvalidInputError, match=r"bfloat16.*\.float\(\)"):
        if function == "restore":
            restore(tensor, Denoising(), model=tiny, steps=1)
        else:
            degrade(tensor, Denoising())


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
def test_operator_data_numpy_cannot_hold_or_with_a_mask_is_refused(make, message):
    with pytest.raises(InvalidInputError, match=message):
        make()
