"""Property-based test of the command line (hypothesis): whatever the arguments, the CLI keeps its promises.

Every generated ``degrade`` / ``restore`` call on tiny images, with valid and invalid options and
values and with output paths that coincide with inputs or with each other, must:

- exit with 0, 1, 2 or 130;
- on failure: print exactly one line on stderr and leave no new or changed file;
- on success: write a finite output (and nothing else than the outputs asked for), inputs unchanged.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_treg.cli import commands as cli
from napari_treg.io import files as io

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: 60 calls keep the test near a minute on one CPU core; TREG_CLI_EXAMPLES=500 searches longer
CLI_RUNS = settings(
    max_examples=int(os.environ.get("TREG_CLI_EXAMPLES", "60")), deadline=None, suppress_health_check=list(HealthCheck)
)

INPUTS = ("grey.npy", "stack.tif", "rgb.png", "small.npy", "big.npy", "empty.npy", "missing.npy")
MASKS = ("mask.npy", "nan_mask.npy", "small_mask.npy", "missing_mask.npy")
KERNELS = ("kernel.npy", "negative_kernel.npy")
OUTPUT_EXTENSIONS = (".npy", ".tif", ".png", ".jpg", ".bmp", "")


def _files(folder: Path) -> None:
    """The tiny inputs every example starts from."""
    rng = np.random.default_rng(0)
    np.save(folder / "grey.npy", rng.random((16, 16)).astype(np.float32))
    io.write_image(folder / "stack.tif", rng.integers(0, 65535, (2, 16, 16)).astype(np.uint16))
    io.write_image(folder / "rgb.png", rng.integers(0, 255, (16, 16, 3)).astype(np.uint8))
    np.save(folder / "small.npy", rng.random((2, 2)))
    big = np.zeros((16, 16))
    big[3, 3] = 1e25
    np.save(folder / "big.npy", big)
    (folder / "empty.npy").write_bytes(b"")
    mask = np.zeros((16, 16), np.uint8)
    mask[4:9, 3:7] = 2
    np.save(folder / "mask.npy", mask)
    np.save(folder / "nan_mask.npy", np.where(mask > 0, np.nan, 0.0))
    np.save(folder / "small_mask.npy", mask[:8, :8])
    np.save(folder / "kernel.npy", np.outer([1, 2, 1], [1, 3, 1]).astype(np.float32))
    np.save(folder / "negative_kernel.npy", -np.ones((3, 3)))
    (folder / "existing_folder").mkdir()


def _state(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


# option: (valid values, invalid or extreme values)
NUMBERS = {
    "--factor": (["1", "2", "4"], ["0", "-1", "x", "33", "1000000000"]),
    "--sigma": (["0.5", "1.5"], ["0", "-1", "nan", "1e6", "inf"]),
    "--length": (["3", "7.5"], ["0", "1e9"]),
    "--angle": (["0", "30", "-400"], ["nan"]),
    "--filter": (["bicubic", "box", "gaussian"], ["lanczos"]),
    "--seed": (["0", "7"], ["-1", str(2**70), "1.5"]),
}
DEGRADE_NUMBERS = {"--noise": (["0", "0.01", "0.5", "100"], ["1e40", "-1", "nan"])}
RESTORE_NUMBERS = {
    "--steps": (["1", "2", "3"], ["0", "x"]),
    "--guidance": (["0", "5"], ["1e30", "-1", "inf"]),
    "--dc-every": (["0", "1", "2"], []),
    "--dc-until": (["0.5", "1"], ["2"]),
    "--cg-iterations": (["0", "2"], ["-3"]),
    "--cg-lambda": (["1e-4", "1"], ["0", "1e-300"]),
    "--negation-steps": (["0", "1", "2"], []),
    "--negation-lr": (["0", "0.001"], ["1e30"]),
    "--batch-size": (["auto", "1", "2"], ["0"]),
    "--noise": (["0.01", "0"], ["-2"]),
    "--method": (["treg", "tikhonov", "richardson_lucy", "psld"], ["magic"]),
    "--device": (["cpu"], ["tpu"]),
    "--model": (["tiny", "analytic"], []),
}


def _choice(draw, good: tuple | list, bad: tuple | list, valid: bool):
    return draw(st.sampled_from(list(good) if valid or not bad else [*good, *bad]))


@st.composite
def paths(draw, folder: Path, inputs: list[str], outputs: list[str], collide: bool) -> str:
    """An output path: a new file, or (``collide``) one of the call's inputs or outputs, a link to an
    input, a folder, a missing folder or a file type that cannot hold the result."""
    kind = draw(st.sampled_from(["input", "output", "link", "folder", "nowhere", "odd"] if collide else ["new"]))
    if kind == "input" or (kind == "output" and not outputs):
        return draw(st.sampled_from(inputs))
    if kind == "output":
        return draw(st.sampled_from(outputs))
    if kind == "link":
        link = folder / f"link{len(outputs)}{Path(inputs[0]).suffix}"
        link.symlink_to(inputs[0])
        return str(link)
    if kind == "folder":
        return str(folder / "existing_folder")
    if kind == "nowhere":
        return str(folder / "nowhere" / "out.npy")
    extension = draw(st.sampled_from(OUTPUT_EXTENSIONS[2:] if kind == "odd" else OUTPUT_EXTENSIONS[:2]))
    return str(folder / f"out{len(outputs)}{extension}")


@st.composite
def calls(draw, folder: Path) -> tuple[list[str], list[str]]:
    """``(argv, outputs)``: a ``degrade`` or ``restore`` call and the output paths it names.

    A third of the calls are valid (so runs that succeed are well covered), a third have valid values
    but output paths that collide with an input, with each other or with a folder, and a third mix in
    invalid values and damaged inputs.
    """
    mode = draw(st.sampled_from(["valid", "paths", "values"]))
    valid = mode != "values"
    command = draw(st.sampled_from(["degrade", "restore"]))
    inputs = [str(folder / _choice(draw, INPUTS[:3], INPUTS[3:], valid))]
    operator = _choice(draw, ["sr", "gauss", "motion", "kernel", "inpaint", "denoise"], ["blur"], valid)
    argv = [command, inputs[0], "-q", "--operator", operator]
    if operator == "inpaint" or (not valid and draw(st.integers(0, 9)) == 0):
        inputs.append(str(folder / _choice(draw, MASKS[:1], MASKS[1:], valid)))
        argv += ["--mask", inputs[-1]]
    if operator == "kernel" or (not valid and draw(st.integers(0, 9)) == 0):
        inputs.append(str(folder / _choice(draw, KERNELS[:1], KERNELS[1:], valid)))
        argv += ["--kernel", inputs[-1]]
    outputs = [draw(paths(folder, inputs, [], mode == "paths"))]
    argv += ["-o", outputs[0]]
    numbers = {**NUMBERS, **(DEGRADE_NUMBERS if command == "degrade" else RESTORE_NUMBERS)}
    for option in draw(st.lists(st.sampled_from(sorted(numbers)), max_size=5, unique=True)):
        argv += [option, _choice(draw, *numbers[option], valid)]
    rgb = draw(st.sampled_from([None, "--rgb", "--no-rgb"] if not valid else [None]))
    if rgb:
        argv.append(rgb)
    if command == "restore":
        defaults = {"--model": "tiny", "--steps": draw(st.sampled_from(["1", "2", "3"])), "--device": "cpu"}
        for option, value in defaults.items():
            if option not in argv:
                argv += [option, value]
        if draw(st.booleans()):
            outputs.append(draw(paths(folder, inputs, outputs, mode == "paths")))
            argv += ["--info", outputs[-1]]
    return argv, outputs


@pytest.fixture(scope="module")
def workspace():
    with tempfile.TemporaryDirectory(prefix="treg-cli-properties-") as root:
        yield Path(root)


@CLI_RUNS
@given(data=st.data())
def test_every_cli_call_keeps_its_promises(workspace, capsys, data):
    folder = Path(tempfile.mkdtemp(dir=workspace))
    _files(folder)
    argv, outputs = data.draw(calls(folder))
    before = _state(folder)
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err
    event(f"exit {code}")
    assert code in (0, 1, 2, 130), (argv, err)
    after = _state(folder)
    if code != 0:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("napari-treg: "), (argv, err)
        assert after == before, (argv, err)
        return
    written = {str(Path(path).relative_to(folder)) for path in outputs}
    untouched = {name: digest for name, digest in before.items() if name not in written}
    assert {name: digest for name, digest in after.items() if name not in written} == untouched, argv  # inputs kept
    assert set(after) - set(before) <= written, argv  # nothing but the outputs appeared
    result = io.read_image(outputs[0])
    assert result.size and np.isfinite(result).all(), argv
