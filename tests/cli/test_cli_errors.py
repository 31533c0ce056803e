"""CLI failures are one line with a non-zero exit status and leave no file (napari_treg.cli.commands).

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_treg import api, restore
from napari_treg.cli import commands as cli
from napari_treg.errors import (
    Cancelled,
    DivergenceError,
    ModelNotFoundError,
    OutOfMemoryError,
    TRegError,
)
from napari_treg.operators import Denoising

os.environ.setdefault("HF_HUB_OFFLINE", "1")


PYTHON_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run_python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=PYTHON_ENV, timeout=timeout)


def _single_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


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
@pytest.mark.issue6
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
        (["--operator", "denoise", "--model", "no-such-model"], 2),  # a bad value: exit 2 (issue 35)
        (["--operator", "denoise", "--guidance", "nan"], 2),
        (["--operator", "denoise", "--steps", "0"], 2),
    ],
)
@pytest.mark.issue6
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
@pytest.mark.issue6
def test_cli_faults_are_one_line_and_leave_no_file(tmp_path, capsys, monkeypatch, error, code):
    def failing_load(model, device, dtype):
        raise error

    monkeypatch.setattr(api, "_load", failing_load)
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    argv = ["restore", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", "-q"]
    assert cli.main(argv) == code
    _one_line(capsys)
    assert list(tmp_path.iterdir()) == [tmp_path / "in.npy"]


# ------------------------------------------------------------------------------ tracebacks -> one line


@pytest.mark.issue12
def test_importing_the_cli_does_not_load_torch():
    run = _run_python("import sys, napari_treg.cli.commands; print('torch' in sys.modules)", timeout=60)
    assert run.stdout.strip() == "False", run.stderr


@pytest.mark.issue12
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
import napari_treg.cli.commands as cli
sys.exit(cli.main(["degrade", r"{tmp_path}/in.npy", "-o", r"{tmp_path}/o.npy", "--operator", "denoise"]))
"""
    run = _run_python(code, timeout=60)
    assert run.returncode == 130
    assert "interrupted" in _single_error_line(run.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


def _cli_code(argv: list[str], hook: str) -> str:
    """A child running ``napari-treg argv`` with ``hook`` (a meta_path finder class ``Hook``) installed first."""
    return f"""
import signal, sys, weakref
{hook}
sys.meta_path.insert(0, Hook())
import napari_treg.cli.commands as cli
sys.exit(cli.main({argv!r}))
"""


def _degrade_code(tmp_path, hook: str) -> str:
    """A child running ``degrade`` of tmp_path/in.npy with ``hook`` installed first."""
    return _cli_code(["degrade", f"{tmp_path}/in.npy", "-o", f"{tmp_path}/o.npy", "--operator", "denoise", "-q"], hook)


#: a hook raising SIGINT inside a weakref callback when torch is first imported: CPython drops that KeyboardInterrupt
DROPPED_SIGINT_HOOK = """
class Box:
    pass
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            box = Box()
            ref = weakref.ref(box, lambda _: signal.raise_signal(signal.SIGINT))
            del box  # the callback runs now, and the KeyboardInterrupt is raised inside it
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
@pytest.mark.issue12
def test_a_real_sigint_during_startup_is_one_line_exit_130(tmp_path):
    """A real SIGINT while main() imports torch: the child waits there (on stdin) until the signal has been sent."""
    import signal

    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    hook = """
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            print("importing torch", flush=True)
            sys.stdin.readline()  # returns when the parent closes stdin, after the SIGINT
"""
    process = subprocess.Popen(
        [sys.executable, "-c", _degrade_code(tmp_path, hook)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=PYTHON_ENV,
    )
    assert process.stdout.readline().strip() == "importing torch"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)  # closes stdin: a swallowed SIGINT lets the run finish
    assert process.returncode == 130, stderr
    assert "interrupted" in _single_error_line(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
@pytest.mark.issue12
def test_a_sigint_that_cpython_drops_in_a_weakref_callback_still_exits_130(tmp_path):
    """Ctrl-C landing in a weakref callback (importlib's module-lock one, while torch imports, did under load):
    CPython only prints the KeyboardInterrupt; the run went on and wrote o.npy with exit 0."""
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    run = _run_python(_degrade_code(tmp_path, DROPPED_SIGINT_HOOK), timeout=120)
    assert run.returncode == 130, run.stderr
    assert "interrupted" in _single_error_line(run.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals")
def test_a_sigint_that_cpython_drops_stops_a_batch_run_too(tmp_path):
    """The same dropped Ctrl-C during ``batch``: it stops (exit 130, resumable) instead of restoring every unit."""
    (tmp_path / "in").mkdir()
    for k in range(3):
        np.save(tmp_path / "in" / f"img{k}.npy", np.zeros((16, 16), np.float32))
    argv = ["batch", f"{tmp_path}/in", "-o", f"{tmp_path}/out", "--operator", "denoise", "--model", "analytic"]
    code = _cli_code([*argv, "--steps", "2", "--workers", "1", "-q"], DROPPED_SIGINT_HOOK)
    run = _run_python(code, timeout=180)
    assert run.returncode == 130, run.stderr
    restored = list((tmp_path / "out").glob("img*.npy")) if (tmp_path / "out").exists() else []
    assert len(restored) < 3  # stopped, not run to the end
    # the one line says what is left: units to resume from, or (interrupted while torch imports) nothing
    said = "rerun the same command to resume" if restored else "no output written"
    assert run.stderr.strip().count("\n") == 0 and "interrupted" in run.stderr and said in run.stderr, run.stderr


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, "
        b"'shape': (16, 16), }" + b" " * 50 + b"\n" + b"\x00" * 64,
    ],
)
@pytest.mark.issue12
def test_cli_empty_and_truncated_npy_inputs_are_one_line_exit_2(tmp_path, capsys, content):
    (tmp_path / "in.npy").write_bytes(content)
    argv = ["degrade", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", "-q"]
    assert cli.main(argv) == 2
    assert "cannot read" in _one_line(capsys)


@pytest.mark.issue12
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


@pytest.mark.issue12
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
@pytest.mark.issue12
def test_check_display(environ, platform, refused):
    from napari_treg.plugin.demo import check_display

    if refused:
        with pytest.raises(TRegError, match="no display"):
            check_display(environ, platform)
    else:
        check_display(environ, platform)
