"""Hostile input to the engine: prompts that are not UTF-8 text, images too large for host memory (issue 23)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from napari_treg import memory, restore
from napari_treg.cli import commands as cli
from napari_treg.errors import InvalidInputError, OutOfMemoryError
from napari_treg.operators import Denoising
from napari_treg.settings import check_text

LATIN1 = "café à l'œil".encode("latin-1", "replace")  # what a Latin-1 script or terminal passes


def test_utf8_bytes_are_decoded():
    assert check_text("café".encode(), "prompt") == "café"


def test_latin1_bytes_are_refused_by_name():
    with pytest.raises(InvalidInputError, match=r"prompt is not UTF-8 text \(byte 0xe9 at position 3"):
        check_text(LATIN1, "prompt")


def test_an_argv_with_escaped_latin1_bytes_is_refused_by_name():
    """Python hands undecodable argv bytes over as surrogates (surrogateescape)."""
    argument = os.fsdecode(LATIN1)
    assert "\udce9" in argument
    with pytest.raises(InvalidInputError, match="negative_prompt is not UTF-8 text"):
        check_text(argument, "negative_prompt")


def test_escaped_utf8_bytes_are_decoded():
    assert check_text("café".encode().decode("ascii", "surrogateescape"), "prompt") == "café"


def test_lone_surrogates_are_refused():
    with pytest.raises(InvalidInputError, match="not text"):
        check_text("a\ud800b", "prompt")


@pytest.mark.parametrize("text", ["", "café", "a\x01b\x00", "\t\n", "猫"])
def test_unicode_and_control_characters_pass_unchanged(text):
    assert check_text(text, "prompt") == text


def test_cli_with_a_latin1_prompt_is_one_line_exit_2(tmp_path, capsys):
    np.save(tmp_path / "in.npy", np.zeros((16, 16), np.float32))
    argv = ["restore", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "denoise"]
    argv += ["--model", "tiny", "--steps", "1", "--device", "cpu", "-q", "--prompt", os.fsdecode(LATIN1)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "prompt is not UTF-8 text" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


# ------------------------------------------------------------------------------ images too large for host memory

HUGE = np.broadcast_to(np.uint8(7), (60000, 60000))  # 3.6e9 values in one byte of memory


def test_a_huge_image_is_out_of_memory_with_advice_before_allocating(monkeypatch):
    monkeypatch.setattr(memory, "available_host_bytes", lambda: 8 * 2**30)
    with pytest.raises(OutOfMemoryError, match=r"53\.6 GiB and 8\.0 GiB are available\. Restore it in parts"):
        restore(HUGE, Denoising(), model="tiny", steps=1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS behaves like this on Linux")
def test_a_failed_host_allocation_in_preparation_is_out_of_memory():
    """Where free memory cannot be asked (not Linux), NumPy's MemoryError still becomes the documented error."""
    code = """
import resource
import numpy as np
from napari_treg import memory, restore
from napari_treg.errors import OutOfMemoryError
from napari_treg.operators import Denoising
memory.available_host_bytes = lambda: None
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 500 * 2**20, resource.RLIM_INFINITY))
try:
    restore(np.broadcast_to(np.uint8(7), (60000, 60000)), Denoising(), model="tiny", steps=1)
except OutOfMemoryError as error:
    print(type(error).__name__, error)
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert run.stdout.startswith("OutOfMemoryError out of host memory"), run.stdout + run.stderr
    assert "smaller image" in run.stdout and "tiling" in run.stdout
