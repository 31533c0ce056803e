"""The output-path guard (napari_treg.io.outputs): no file of the user's is ever clobbered.

Every output of a run is checked before any work (never an input or another output, its folder
writable, its format able to hold the result), and the outputs of one run appear together or not
at all.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_treg import api
from napari_treg.cli import commands as cli
from napari_treg.errors import InvalidInputError
from napari_treg.io import files as io
from napari_treg.io import outputs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = ["--model", "tiny", "--steps", "1", "--device", "cpu", "-q"]


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (symlinks as their target text) and a hash of its content."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            state[str(path)] = "-> " + os.readlink(path)
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture
def folder(tmp_path):
    np.save(tmp_path / "in.npy", np.random.default_rng(0).random((16, 16)).astype(np.float32))
    np.save(tmp_path / "stack.npy", np.random.default_rng(1).random((2, 16, 16)).astype(np.float32))
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 1
    np.save(tmp_path / "mask.npy", mask)
    return tmp_path


@pytest.fixture
def never_runs(monkeypatch):
    """Fail the test if a restore gets as far as loading a model (the guard must refuse before)."""

    def load(model, device, dtype):
        raise AssertionError("the run started although an output path was refused")

    monkeypatch.setattr(api, "_load", load)


def _refused(capsys, argv: list[str], folder: Path, expected: str) -> None:
    before = _digest(folder)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("napari-treg: error: ") and expected in err[0], err
    assert _digest(folder) == before  # no new or changed file


# ------------------------------------------------------------------------------ never an input


def test_degrade_onto_its_own_input_is_refused(folder, capsys):
    argv = ["degrade", f"{folder}/in.npy", "-o", f"{folder}/in.npy", "--operator", "denoise", "-q"]
    _refused(capsys, argv, folder, "is the input file")


def test_info_onto_the_input_is_refused(folder, capsys, never_runs):
    argv = [
        "restore",
        f"{folder}/in.npy",
        "-o",
        f"{folder}/o.npy",
        "--info",
        f"{folder}/in.npy",
        "--operator",
        "denoise",
        *TINY,
    ]
    _refused(capsys, argv, folder, "--info")


def test_info_and_output_on_one_file_is_refused(folder, capsys, never_runs):
    argv = [
        "restore",
        f"{folder}/in.npy",
        "-o",
        f"{folder}/o.npy",
        "--info",
        f"{folder}/o.npy",
        "--operator",
        "denoise",
        *TINY,
    ]
    _refused(capsys, argv, folder, "are the same file")


def test_output_onto_the_mask_file_is_refused(folder, capsys):
    argv = [
        "degrade",
        f"{folder}/in.npy",
        "-o",
        f"{folder}/mask.npy",
        "--operator",
        "inpaint",
        "--mask",
        f"{folder}/mask.npy",
        "-q",
    ]
    _refused(capsys, argv, folder, "is the input file")


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dotted"])
def test_other_names_of_the_input_are_refused(folder, capsys, link):
    if link == "symlink":
        (folder / "alias.npy").symlink_to(folder / "in.npy")
        output = folder / "alias.npy"
    elif link == "hardlink":
        os.link(folder / "in.npy", folder / "alias.npy")
        output = folder / "alias.npy"
    else:
        (folder / "sub").mkdir()
        output = folder / "sub" / ".." / "in.npy"
    argv = ["degrade", f"{folder}/in.npy", "-o", str(output), "--operator", "denoise", "-q"]
    _refused(capsys, argv, folder, "is the input file")


def test_a_symlinked_folder_leading_to_the_input_is_refused(folder, capsys):
    (folder / "view").symlink_to(folder, target_is_directory=True)
    argv = ["degrade", f"{folder}/view/in.npy", "-o", f"{folder}/in.npy", "--operator", "denoise", "-q"]
    _refused(capsys, argv, folder, "is the input file")


# ------------------------------------------------------------------------------ folders and formats


def test_info_pointing_at_a_folder_is_refused_before_the_run(folder, capsys, never_runs):
    (folder / "existing").mkdir()
    argv = [
        "restore",
        f"{folder}/in.npy",
        "-o",
        f"{folder}/o.npy",
        "--info",
        f"{folder}/existing",
        "--operator",
        "denoise",
        *TINY,
    ]
    _refused(capsys, argv, folder, "is a folder")


@pytest.mark.parametrize("option", ["-o", "--info"])
def test_missing_output_folder_is_refused(folder, capsys, never_runs, option):
    paths = {"-o": f"{folder}/o.npy", "--info": f"{folder}/o.json"}
    paths[option] = f"{folder}/nowhere/out{'.npy' if option == '-o' else '.json'}"
    argv = ["restore", f"{folder}/in.npy", "-o", paths["-o"], "--info", paths["--info"], "--operator", "denoise", *TINY]
    _refused(capsys, argv, folder, "does not exist")


def test_unwritable_folder_and_protected_file_are_refused(folder, capsys, monkeypatch):
    locked = folder / "locked"
    locked.mkdir()
    np.save(folder / "protected.npy", np.zeros(3))
    # permissions as os.access reports them (root may write anywhere, so they are simulated)
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) not in (locked, folder / "protected.npy"))
    for target, message in ((locked / "o.npy", "not writable"), (folder / "protected.npy", "write-protected")):
        argv = ["degrade", f"{folder}/in.npy", "-o", str(target), "--operator", "denoise", "-q"]
        _refused(capsys, argv, folder, message)


def test_a_stack_to_png_is_refused_before_the_run(folder, capsys, never_runs):
    argv = ["restore", f"{folder}/stack.npy", "-o", f"{folder}/o.png", "--operator", "denoise", *TINY]
    _refused(capsys, argv, folder, "use .tif or .npy for stacks")


def test_the_planned_shape_follows_the_operator(folder):
    from napari_treg.operators import SuperResolution

    image = np.zeros((2, 10, 12, 4))  # an RGBA stack: alpha is dropped
    assert outputs.result_shape(image, None, SuperResolution(2).image_hw) == (2, 20, 24, 3)
    assert outputs.result_shape(image, None, SuperResolution(2).measurement_hw) == (2, 5, 6, 3)
    with pytest.raises(InvalidInputError, match="stacks"):
        outputs.check_outputs([outputs.Output("-o", folder / "o.jpg", (2, 20, 24, 3))], [])
    outputs.check_outputs([outputs.Output("-o", folder / "o.jpg", (20, 24, 3))], [])  # one RGB image fits


def test_same_file_sees_through_links_and_relative_paths(folder, monkeypatch):
    (folder / "link.npy").symlink_to("in.npy")
    monkeypatch.chdir(folder)
    assert outputs.same_file("in.npy", folder / "link.npy")
    assert outputs.same_file("./new.npy", folder / "new.npy")  # neither exists yet
    assert not outputs.same_file("in.npy", "stack.npy")


# ------------------------------------------------------------------------------ all or nothing


def _writer(content: bytes):
    return lambda path: path.write_bytes(content)


def _fail(path: Path) -> None:
    path.write_bytes(b"half")
    raise OSError("disk full")


def test_outputs_appear_together(folder):
    outputs.write_together({folder / "a.bin": _writer(b"A"), folder / "b.json": _writer(b"B")})
    assert (folder / "a.bin").read_bytes() == b"A" and (folder / "b.json").read_bytes() == b"B"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("interrupt", [OSError, KeyboardInterrupt])
def test_a_failure_while_writing_leaves_no_output_and_old_files_intact(folder, interrupt):
    (folder / "a.bin").write_bytes(b"old")
    before = _digest(folder)

    def failing(path):
        path.write_bytes(b"half")
        raise interrupt("stopped")

    with pytest.raises(interrupt):
        outputs.write_together({folder / "a.bin": _writer(b"new"), folder / "b.bin": failing})
    assert _digest(folder) == before


def test_a_failure_while_renaming_puts_back_what_was_renamed(folder, monkeypatch):
    (folder / "a.bin").write_bytes(b"old")
    (folder / "link.bin").symlink_to("a.bin")
    before = _digest(folder)
    real_replace = os.replace

    def replace(source, target):
        if Path(target).name == "c.bin":
            raise OSError("rename failed")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    writers = {
        folder / "a.bin": _writer(b"new"),
        folder / "link.bin": _writer(b"L"),
        folder / "b.bin": _writer(b"B"),
        folder / "c.bin": _writer(b"C"),
    }
    with pytest.raises(OSError, match="rename failed"):
        outputs.write_together(writers)
    assert _digest(folder) == before


def test_cli_failure_after_the_run_leaves_no_output(folder, capsys, monkeypatch):
    """The image is written, then --info fails: neither file may remain."""
    monkeypatch.setattr(cli, "_write_info", lambda path, info: _fail(Path(path)))
    before = _digest(folder)
    argv = [
        "restore",
        f"{folder}/in.npy",
        "-o",
        f"{folder}/o.npy",
        "--info",
        f"{folder}/o.json",
        "--operator",
        "denoise",
        *TINY,
    ]
    assert cli.main(argv) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert _digest(folder) == before


def test_cli_writes_both_outputs_on_success(folder):
    argv = [
        "restore",
        f"{folder}/in.npy",
        "-o",
        f"{folder}/o.tif",
        "--info",
        f"{folder}/o.json",
        "--operator",
        "denoise",
        *TINY,
    ]
    assert cli.main(argv) == 0
    assert io.read_image(folder / "o.tif").shape == (16, 16)
    assert json.loads((folder / "o.json").read_text())["params"]["operator"] == "Denoising()"
