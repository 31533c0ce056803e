"""The napari-treg command line: round trips, operator options, errors, interrupts."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_treg.cli import commands as cli
from napari_treg.io import files as io

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = ["--model", "tiny", "--steps", "4", "--device", "cpu", "-q"]


@pytest.fixture
def clean(tmp_path):
    """A smooth 64x64 uint8 test image on disk as .npy, .tif and .png."""
    yy, xx = np.mgrid[0:64, 0:64]
    image = (127 + 100 * np.sin(xx / 6.0) * np.cos(yy / 9.0)).astype(np.uint8)
    paths = {}
    for ext in (".npy", ".tif", ".png"):
        paths[ext] = io.write_image(tmp_path / f"clean{ext}", image)
    return image, paths


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


def assert_one_line_error(capsys, code: int, expected: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == expected
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("napari-treg: error: ")
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".npy", ".tif", ".png"])
def test_degrade_then_restore_round_trip(clean, tmp_path, ext):
    image, paths = clean
    low = tmp_path / f"low{ext}"
    out = tmp_path / f"restored{ext}"
    code = cli.main(
        ["degrade", str(paths[ext]), "-o", str(low), "--operator", "sr", "--factor", "2", "--noise", "0.01", "-q"]
    )
    assert code == 0
    measured = io.read_image(low)
    assert measured.shape == (32, 32)
    code = cli.main(
        ["restore", str(low), "-o", str(out), "--operator", "sr", "--factor", "2", "--prompt", "a test pattern", *TINY]
    )
    assert code == 0
    restored = io.read_image(out)
    assert restored.shape == image.shape
    assert restored.dtype == (np.uint8 if ext == ".png" else np.float32)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"clean{e}" for e in (".npy", ".tif", ".png")] + [low.name, out.name]
    )


def test_restore_writes_info_and_progress(clean, tmp_path, capsys):
    _, paths = clean
    out, info = tmp_path / "out.tif", tmp_path / "info.json"
    argv = [
        "restore",
        str(paths[".npy"]),
        "-o",
        str(out),
        "--operator",
        "denoise",
        "--model",
        "tiny",
        "--steps",
        "3",
        "--device",
        "cpu",
        "--info",
        str(info),
    ]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "3/3" in err  # the tqdm bar reached the end
    assert "wrote" in err and "residual" in err
    import json

    assert json.loads(info.read_text())["params"]


def test_degrade_inpaint_with_mask_file(clean, tmp_path):
    image, paths = clean
    mask = np.zeros((64, 64), np.uint8)
    mask[20:30, 20:40] = 3  # any label > 0 is missing
    io.write_image(tmp_path / "mask.png", mask)
    out = tmp_path / "holes.npy"
    argv = [
        "degrade",
        str(paths[".npy"]),
        "-o",
        str(out),
        "--operator",
        "inpaint",
        "--mask",
        str(tmp_path / "mask.png"),
        "--noise",
        "0",
        "-q",
    ]
    assert cli.main(argv) == 0
    holes = io.read_image(out)
    assert holes.shape == image.shape
    np.testing.assert_allclose(holes[:10], image[:10], atol=1e-3)


def test_console_script_end_to_end(clean, tmp_path):
    """The installed entry point, as a user runs it."""
    _, paths = clean
    low, out = tmp_path / "blurred.tif", tmp_path / "sharp.tif"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    entry = Path(sys.executable).parent / "napari-treg"  # installed by pip install -e .
    script = [str(entry)] if entry.exists() else [sys.executable, "-m", "napari_treg.cli"]
    assert cli.main(["degrade", str(paths[".tif"]), "-o", str(low), "--operator", "gauss", "--sigma", "1.5", "-q"]) == 0
    run = subprocess.run(
        [*script, "restore", str(low), "-o", str(out), "--operator", "gauss", "--sigma", "1.5", *TINY],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert io.read_image(out).shape == (64, 64)
    bad = subprocess.run(
        [*script, "restore", str(tmp_path / "missing.tif"), "-o", str(out), "--operator", "denoise"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("napari-treg: error:") and "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- operators


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--operator", "sr"], "SuperResolution(factor=4, filter='bicubic')"),
        (["--operator", "sr", "--factor", "2", "--filter", "box"], "SuperResolution(factor=2, filter='box')"),
        (["--operator", "gauss", "--sigma", "1.5"], "GaussianBlur(sigma=1.5, size="),
        (["--operator", "motion", "--length", "7", "--angle", "30"], "MotionBlur(length=7, angle=30)"),
        (["--operator", "denoise"], "Denoising("),
    ],
)
def test_operator_from_args(tmp_path, argv, expected):
    args = parse("degrade", "in.tif", "-o", str(tmp_path / "o.tif"), *argv)
    assert repr(cli.operator_from_args(args)).startswith(expected)


def test_operator_from_files(tmp_path):
    kernel = np.zeros((5, 3), np.float32)
    kernel[2, 1] = 1
    io.write_image(tmp_path / "k.npy", kernel)
    mask = np.zeros((8, 10), np.uint16)
    mask[:4] = 7
    io.write_image(tmp_path / "m.tif", mask)
    args = parse("restore", "in.tif", "-o", "o.tif", "--operator", "kernel", "--kernel", str(tmp_path / "k.npy"))
    assert repr(cli.operator_from_args(args)) == "KernelBlur(kernel=5x3)"
    args = parse("restore", "in.tif", "-o", "o.tif", "--operator", "inpaint", "--mask", str(tmp_path / "m.tif"))
    assert repr(cli.operator_from_args(args)) == "Inpainting(mask=8x10, missing=50.0%)"


def test_restore_options_reach_restore(tmp_path):
    args = parse(
        "restore",
        "in.tif",
        "-o",
        "o.tif",
        "--operator",
        "denoise",
        "--prompt",
        "cells",
        "--negative-prompt",
        "blur",
        "--guidance",
        "3",
        "--steps",
        "50",
        "--seed",
        "7",
        "--model",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float16",
        "--method",
        "treg",
        "--dc-every",
        "2",
        "--dc-until",
        "0.5",
        "--cg-iterations",
        "3",
        "--cg-lambda",
        "0.01",
        "--no-adaptive-negation",
        "--negation-lr",
        "0.001",
        "--negation-steps",
        "4",
        "--batch-size",
        "2",
        "--no-rgb",
        "--noise",
        "0.02",
        "--tile-size",
        "256",
        "--tile-overlap",
        "32",
    )
    assert cli.restore_kwargs(args) == {
        "prompt": "cells",
        "negative_prompt": "blur",
        "guidance": 3.0,
        "steps": 50,
        "seed": 7,
        "model": "tiny",
        "device": "cpu",
        "dtype": "float16",
        "method": "treg",
        "schedule": "data-first",
        "dc_every": 2,
        "dc_until": 0.5,
        "cg_iterations": 3,
        "cg_lambda": 0.01,
        "adaptive_negation": False,
        "negation_lr": 0.001,
        "negation_steps": 4,
        "batch_size": 2,
        "rgb": False,
        "noise": 0.02,
        "tile_size": 256,
        "tile_overlap": 32,
        "noise_model": "gaussian",
        "gain": None,
        "read_sd": None,
        "offset": None,
    }


def test_batch_size_is_auto_by_default_or_a_number():
    def batch_size(*extra):
        return cli.restore_kwargs(parse("restore", "in.tif", "-o", "o.tif", "--operator", "denoise", *extra))[
            "batch_size"
        ]

    assert batch_size() == "auto"
    assert batch_size("--batch-size", "auto") == "auto"
    assert batch_size("--batch-size", "3") == 3


def test_cli_defaults_are_the_api_defaults():
    """The options are generated from the settings, so with nothing given they equal the API's defaults."""
    from napari_treg.api import degrade, restore

    given = {
        restore: cli.restore_kwargs(parse("restore", "in.tif", "-o", "o.tif", "--operator", "denoise")),
        degrade: vars(parse("degrade", "in.tif", "-o", "o.tif", "--operator", "denoise")),
    }
    for function, values in given.items():
        signature = inspect.signature(function).parameters
        names = [
            name for name in signature if name in values and signature[name].default is not inspect.Parameter.empty
        ]
        assert len(names) >= (13 if function is restore else 3)
        for name in names:
            assert values[name] == signature[name].default, name
    # the method's settings are passed only when given, so the named schedule (or TRegSettings's default) applies
    from napari_treg.solver import TRegSettings

    assert not set(given[restore]) & set(TRegSettings.__dataclass_fields__)
    assert (
        cli.restore_kwargs(parse("restore", "in", "-o", "o", "--operator", "denoise", "--no-final-dc"))["final_dc"]
        is False
    )


def test_a_named_schedule_reaches_restore_and_explicit_options_override_it(monkeypatch, tmp_path):
    def config(*extra):
        return cli.restore_settings(parse("restore", "in", "-o", "o", "--operator", "denoise", *extra)).config

    assert config().final_dc is True and config().data_first is True  # the default schedule, 'data-first'
    assert config("--schedule", "paper").final_dc is False and config("--schedule", "paper").data_first is False
    assert config("--schedule", "faithful").final_dc is True
    assert config("--schedule", "faithful", "--no-final-dc").final_dc is False
    assert config("--schedule", "faithful", "--dc-until", "0.5").dc_until == 0.5


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "argv",
    [
        ["restore", "{tmp}/missing.tif", "-o", "{tmp}/o.tif", "--operator", "denoise"],
        ["degrade", "{clean}", "-o", "{tmp}/o.bmp", "--operator", "denoise"],
        ["degrade", "{tmp}/in.gif", "-o", "{tmp}/o.tif", "--operator", "denoise"],
        ["degrade", "{clean}", "-o", "{tmp}/o.tif", "--operator", "gauss", "--sigma", "-1"],
        ["degrade", "{clean}", "-o", "{tmp}/o.tif", "--operator", "blur"],
        ["degrade", "{clean}", "-o", "{tmp}/o.tif", "--operator", "inpaint"],
        ["restore", "{clean}", "-o", "{tmp}/o.tif", "--operator", "kernel"],
        ["restore", "{clean}", "-o", "{tmp}/o.tif", "--operator", "sr", "--mask", "{clean}"],
        ["restore", "{clean}", "-o", "{tmp}/no/o.tif", "--operator", "denoise"],
        ["restore", "{clean}", "-o", "{tmp}/o.tif", "--operator", "sr", "--factor", "0"],
        ["restore", "{clean}", "-o", "{tmp}/o.tif", "--operator", "denoise", "--steps", "x"],
        ["restore", "{clean}", "--operator", "denoise"],
        ["restore", "{clean}", "-o", "{tmp}/o.tif", "--operator", "denoise", "--model", "nosuchmodel"],  # issue 35
        ["frobnicate"],
        [],
    ],
)
def test_bad_input_is_one_line_exit_2(clean, tmp_path, capsys, argv):
    values = {"tmp": tmp_path, "clean": clean[1][".npy"]}
    code = cli.main([arg.format(**values) for arg in argv])
    assert_one_line_error(capsys, code)
    assert not (tmp_path / "o.tif").exists()


def test_mask_shape_mismatch_is_bad_input(clean, tmp_path, capsys):
    io.write_image(tmp_path / "m.npy", np.ones((10, 10), bool))
    code = cli.main(
        [
            "degrade",
            str(clean[1][".npy"]),
            "-o",
            str(tmp_path / "o.npy"),
            "--operator",
            "inpaint",
            "--mask",
            str(tmp_path / "m.npy"),
        ]
    )
    assert_one_line_error(capsys, code)


def test_missing_model_is_exit_1(clean, tmp_path, capsys):
    code = cli.main(
        [
            "restore",
            str(clean[1][".npy"]),
            "-o",
            str(tmp_path / "o.npy"),
            "--operator",
            "denoise",
            "--model",
            str(tmp_path / "nowhere.safetensors"),
            "--steps",
            "2",
            "--device",
            "cpu",
            "-q",
        ]
    )
    assert_one_line_error(capsys, code, expected=1)


def test_help_exits_0(capsys):
    assert cli.main(["restore", "--help"]) == 0
    assert "--negative-prompt" in capsys.readouterr().out


def test_demo_missing_module_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "napari_treg.plugin.demo", None)  # import fails
    code = cli.main(["demo"])
    assert_one_line_error(capsys, code, expected=1)


# --------------------------------------------------------------------------- interrupts


def test_interrupted_write_leaves_no_output(clean, tmp_path, monkeypatch, capsys):
    def half_write(path, array):
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setitem(io._WRITERS, ".tif", half_write)
    code = cli.main(["degrade", str(clean[1][".npy"]), "-o", str(tmp_path / "o.tif"), "--operator", "denoise", "-q"])
    assert code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("o.tif", ".o.tif"))]


def test_interrupted_restore_leaves_no_output(clean, tmp_path, monkeypatch, capsys):
    def interrupting_bar(self, step, total, preview=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.ProgressBar, "__call__", interrupting_bar)
    code = cli.main(["restore", str(clean[1][".npy"]), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", *TINY])
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (tmp_path / "o.npy").exists()
