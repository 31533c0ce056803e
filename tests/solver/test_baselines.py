"""Baselines: PSLD, Tikhonov by CG and Richardson-Lucy, on the analytic prior."""

from __future__ import annotations

import inspect
import math
import sys

import numpy as np
import pytest
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.models.analytic import AnalyticPrior
from napari_treg.operators import GaussianBlur, Inpainting, MotionBlur, SuperResolution
from napari_treg.solver import METHODS, TRegSettings, get_method, treg_sample
from napari_treg.solver.baselines import psld_loss, psld_sample, richardson_lucy_restore, tikhonov_restore

HW = (16, 16)
NOISE = 0.01


@pytest.fixture(scope="module")
def prior():
    return AnalyticPrior()


def case(prior, op, n=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, labels = prior.sample(n, None, HW, gen)
    ax = op(x)
    return x, labels, ax + NOISE * torch.randn(ax.shape, generator=gen)


def embeddings(prior, labels):
    return prior.embed_text([prior.classes[k] for k in labels]), prior.embed_text([""] * len(labels))


def residual(op, x, y) -> torch.Tensor:
    """``||A x - y||`` per sample in units of the noise norm."""
    return (op(x) - y).flatten(1).norm(dim=1) / (NOISE * math.sqrt(y[0].numel()))


def test_methods_are_registered_with_the_sampler_signature():
    assert list(METHODS)[0] == "treg"
    # every keyword the engine passes to any method; the plane exchange only goes to treg (ensemble.exchanges_planes)
    reference = [p for p in inspect.signature(treg_sample).parameters if p != "exchange"]
    assert "exchange" in inspect.signature(treg_sample).parameters
    for name in ("psld", "tikhonov", "richardson_lucy"):
        params = inspect.signature(get_method(name)).parameters
        assert list(params)[: len(reference)] == reference, name


# -- PSLD -----------------------------------------------------------------------------------------


def test_psld_without_step_sizes_is_ddim(prior):
    op = SuperResolution(4)
    x, labels, y = case(prior, op)
    text, null = embeddings(prior, labels)
    config = TRegSettings(steps=50)
    gens = lambda: [torch.Generator().manual_seed(k) for k in range(len(y))]  # noqa: E731
    ddim = treg_sample(
        prior, y, op, HW, text=text, null=null, config=TRegSettings(steps=50, dc_every=0), generators=gens()
    )
    psld = psld_sample(prior, y, op, HW, text=text, null=null, config=config, generators=gens(), omega=0, gamma=0)
    assert torch.allclose(psld, ddim, atol=1e-5)


def test_psld_gluing_term_vanishes_on_consistent_inpainting(prior):
    missing = np.zeros(HW, bool)
    missing[4:12, 4:12] = True
    op = Inpainting(missing)
    x, _, _ = case(prior, op)
    y = op(x)
    zero = psld_loss(prior, op, y, x, omega=1.0, gamma=1.0)
    assert torch.allclose(zero, torch.zeros(len(x)), atol=1e-5)
    moved = x + 0.1 * torch.from_numpy(~missing).float()  # off the data on the observed pixels
    assert torch.all(psld_loss(prior, op, y, moved, omega=0.0, gamma=1.0) > 0)


@pytest.mark.parametrize("op", [SuperResolution(4), GaussianBlur(1.5)], ids=repr)
def test_psld_pulls_towards_the_data(prior, op):
    x, labels, y = case(prior, op)
    text, null = embeddings(prior, labels)
    config = TRegSettings(steps=50)
    gens = lambda: [torch.Generator().manual_seed(k) for k in range(len(y))]  # noqa: E731
    plain = psld_sample(prior, y, op, HW, text=text, null=null, config=config, generators=gens(), omega=0, gamma=0)
    guided = psld_sample(prior, y, op, HW, text=text, null=null, config=config, generators=gens())
    assert residual(op, guided, y).mean() < 0.85 * residual(op, plain, y).mean()  # ~0.74 (SR), ~0.47 (blur)
    assert torch.equal(prior.classify(guided), labels)


# -- Tikhonov -------------------------------------------------------------------------------------


def test_tikhonov_solves_its_normal_equations(prior):
    op = SuperResolution(2)
    hw = (8, 8)
    y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x = tikhonov_restore(prior, y, op, hw, config=TRegSettings(steps=200), smoothness=1e-2).double()
    eye = torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)
    a = op.forward(eye).reshape(64, 16).T
    d_rows = torch.diff(eye.reshape(64, 8, 8), dim=1).reshape(64, -1).T
    d_cols = torch.diff(eye.reshape(64, 8, 8), dim=2).reshape(64, -1).T
    system = a.T @ a + 1e-2 * (d_rows.T @ d_rows + d_cols.T @ d_cols) + 1e-4 * torch.eye(64, dtype=torch.float64)
    for b in range(2):
        for c in range(3):
            direct = torch.linalg.solve(system, a.T @ y[b, c].double().flatten())
            assert torch.allclose(x[b, c].flatten(), direct, atol=1e-4)


@pytest.mark.parametrize("op", [SuperResolution(4), GaussianBlur(1.5)], ids=repr)
def test_tikhonov_fits_the_data_to_the_noise_level(prior, op):
    _, _, y = case(prior, op)
    x = tikhonov_restore(prior, y, op, HW, config=TRegSettings(steps=100))
    assert residual(op, x, y).mean() < 1.5


# -- Richardson-Lucy ------------------------------------------------------------------------------


@pytest.mark.parametrize("op", [GaussianBlur(1.5), MotionBlur(5, 30), SuperResolution(4, "box")], ids=repr)
def test_richardson_lucy_keeps_flux_and_positivity_and_fits(prior, op):
    x, _, _ = case(prior, op)
    y = op(x)  # noiseless: RL converges towards a fit
    few = richardson_lucy_restore(prior, y, op, HW, config=TRegSettings(steps=5))
    many = richardson_lucy_restore(prior, y, op, HW, config=TRegSettings(steps=100))
    intensity = (many + 1) / 2
    assert torch.all(intensity >= 0)
    # RL conserves the measured flux: sum A u = sum y (intensities)
    assert torch.allclose(((op(many) + 1) / 2).sum(dim=(2, 3)), ((y + 1) / 2).sum(dim=(2, 3)), rtol=1e-4)
    misfit = lambda u: (op(u) - y).flatten(1).norm(dim=1)  # noqa: E731
    assert torch.all(misfit(many) <= torch.clamp(0.5 * misfit(few), min=1e-5))


@pytest.mark.parametrize("op", [SuperResolution(4), Inpainting(np.eye(16, dtype=bool))], ids=repr)
def test_richardson_lucy_refuses_operators_with_negative_or_missing_weights(prior, op):
    y = op(torch.zeros(1, 3, *HW))
    with pytest.raises(InvalidInputError, match="Richardson-Lucy"):
        richardson_lucy_restore(prior, y, op, HW)


# -- progress and cancelling ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["psld", "tikhonov", "richardson_lucy"])
def test_baselines_report_progress_and_can_be_cancelled(prior, name):
    op = GaussianBlur(1.5)
    _, labels, y = case(prior, op, n=1)
    text, null = embeddings(prior, labels)
    seen = []

    def callback(state):
        seen.append(state["i"])
        assert state["z0"].shape == (1, 3, *HW)
        if state["i"] >= 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        get_method(name)(prior, y, op, HW, text=text, null=null, config=TRegSettings(steps=40), callback=callback)
    assert seen == sorted(seen) and seen[-1] >= 9 and seen[-1] < 39


# -- the SD protocol script, on the tiny model ---------------------------------------------------


def test_sd_protocol_runs_on_the_tiny_model(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sd_protocol.py"
    spec = importlib.util.spec_from_file_location("sd_protocol", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "sd_protocol", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    out = tmp_path / "protocol.md"
    argv = [
        "--model",
        "tiny",
        "--size",
        "64",
        "--steps",
        "4",
        "--clip",
        "tiny",
        "--limit",
        "1",
        "--methods",
        "treg",
        "psld",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert module.main(argv) == 0
    text = out.read_text()
    for expected in ("SR x16", "Gaussian deblur", "TReg", "PSLD", "| true |", "| other |"):
        assert expected in text
