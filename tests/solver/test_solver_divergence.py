"""Results that are not numbers are stopped at the step they appear (napari_treg.solver.divergence).

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from napari_treg import degrade, restore
from napari_treg import operators as ops
from napari_treg.cli import commands as cli
from napari_treg.errors import (
    DivergenceError,
    InvalidInputError,
)
from napari_treg.models.tiny import build_tiny_prior
from napari_treg.operators import Denoising, KernelBlur
from napari_treg.solver.divergence import check_finite

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_prior(seed=0)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ faults: divergence


@pytest.mark.issue6
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


@pytest.mark.issue6
def test_nan_in_the_conjugate_gradient_is_detected_at_the_dc_step(tiny):
    with pytest.raises(DivergenceError, match="step 1 of 4"):
        restore(np.ones((16, 16)), _NanOperator(), model=tiny, steps=4, dc_every=1, dc_until=1.0)
    # and the next run is fine
    assert np.isfinite(restore(np.ones((16, 16)), Denoising(), model=tiny, steps=1)).all()


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
@pytest.mark.issue12
def test_check_finite_refuses_nan_and_inf_with_advice(values):
    with pytest.raises(DivergenceError, match="the result has 1 NaN or infinite value.*guidance"):
        check_finite(values, "the result")


@pytest.mark.issue12
def test_check_finite_accepts_finite_and_integer_results():
    check_finite(np.arange(4), "integers")
    check_finite(torch.ones(3), "ones")
    check_finite(np.zeros((0, 3)), "empty")


@pytest.mark.issue12
def test_degrade_with_absurd_noise_is_refused_not_inf():
    with pytest.raises(InvalidInputError, match="noise must be at most 100"):
        degrade(np.random.default_rng(0).random((8, 8)), Denoising(), noise=1e40)
    assert np.isfinite(degrade(np.full((8, 8), 1e30), Denoising(), noise=100)).all()  # the bound holds at 1e30


@pytest.mark.issue12
def test_a_kernel_whose_sum_overflows_is_refused():
    with pytest.raises(InvalidInputError, match="sum overflows.*divide it by its maximum"):
        KernelBlur(np.full((3, 3), 1e308))


@pytest.mark.issue12
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
