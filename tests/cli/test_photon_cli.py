"""Photon noise on the command line (degrade and restore) and in batch settings."""

import json

import numpy as np

from napari_treg.cli.commands import main
from napari_treg.noise import PoissonGaussian

PHOTON_OPTIONS = ["--noise-model", "poisson-gaussian", "--gain", "2", "--read-sd", "3", "--offset", "100"]


def clean_adu(size: int = 32) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    return (100.0 + 2.0 * (5.0 + 395.0 * np.exp(-(rows**2 + cols**2) / (2 * (size / 5) ** 2)))).astype(np.float32)


def test_degrade_and_restore_with_the_poisson_gaussian_model(tmp_path):
    np.save(tmp_path / "clean.npy", clean_adu())
    measured = tmp_path / "y.npy"
    degrade = ["degrade", str(tmp_path / "clean.npy"), "--operator", "gauss", "--sigma", "1", "-o", str(measured)]
    assert main([*degrade, *PHOTON_OPTIONS, "--seed", "4", "-q"]) == 0
    y = np.load(measured)
    assert np.median(y) > 100 and np.var(y - clean_adu()) > 100  # photon noise in ADU, not a tiny Gaussian level
    out, info = tmp_path / "x.npy", tmp_path / "run.json"
    restore = ["restore", str(measured), "--operator", "gauss", "--sigma", "1", "--model", "analytic", "--steps", "3"]
    assert main([*restore, *PHOTON_OPTIONS, "-o", str(out), "--info", str(info), "-q"]) == 0
    record = json.loads(info.read_text())
    assert record["noise_model"]["input_units"] == {"gain": 2.0, "read_sd": 3.0, "offset": 100.0}
    assert set(record["noise_model"]["model_units"]) == {"slope", "intercept", "floor"}
    assert record["params"]["noise_model"] == "poisson-gaussian"


def test_half_a_model_is_a_usage_error(tmp_path, capsys):
    np.save(tmp_path / "clean.npy", clean_adu())
    degrade = ["degrade", str(tmp_path / "clean.npy"), "--operator", "denoise", "-o", str(tmp_path / "y.npy")]
    assert main([*degrade, "--noise-model", "poisson-gaussian", "-q"]) == 2
    assert "needs --gain and --read-sd" in capsys.readouterr().err
    restore = ["restore", str(tmp_path / "clean.npy"), "--operator", "denoise", "--model", "analytic"]
    assert main([*restore, "--gain", "2", "--read-sd", "1", "-o", str(tmp_path / "x.npy"), "-q"]) == 2
    assert "give noise_model='poisson-gaussian' too" in capsys.readouterr().err
    assert main([*degrade, "--noise-model", "poisson-gaussian", "--gain", "0", "--read-sd", "1", "-q"]) == 2
    assert "gain must be > 0" in capsys.readouterr().err


def test_batch_settings_take_a_poisson_gaussian_object():
    from napari_treg.batch.runner import checked_settings

    _, settings, _ = checked_settings({"model": "analytic", "noise_model": PoissonGaussian(2.0, 3.0, 100.0)})
    assert settings.run.photon_noise() == PoissonGaussian(2.0, 3.0, 100.0)
