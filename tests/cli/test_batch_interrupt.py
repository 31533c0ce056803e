"""SIGTERM while ``napari-treg batch`` starts its local cluster (issue 33): one line and exit status 130, no dask
traceback (before: 29-71 lines of them at exit), no worker process left, nothing written. A real subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

psutil = pytest.importorskip("psutil")
pytest.importorskip("distributed")

SRC = Path(__file__).resolve().parents[2] / "src"


def test_sigterm_while_the_local_cluster_starts_ends_with_one_line(tmp_path):
    from napari_treg.io import files as io

    (tmp_path / "in").mkdir()
    io.write_image(tmp_path / "in" / "a.tif", (np.random.default_rng(0).random((16, 16)) * 500).astype(np.uint16))
    command = [sys.executable, "-m", "napari_treg.cli", "batch", str(tmp_path / "in"), "-o", str(tmp_path / "out")]
    command += ["--operator", "gauss", "--sigma", "1", "--model", "analytic", "--steps", "2", "--workers", "1"]
    environment = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        parent, deadline = psutil.Process(process.pid), time.monotonic() + 120
        while not parent.children(recursive=True) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # the first worker process appears: the local cluster is starting
        workers = parent.children(recursive=True)
        assert workers, "the local cluster's workers never started"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 130, err
    assert lines == ["napari-treg: interrupted; nothing was written"], err
    assert not (tmp_path / "out").exists()
    time.sleep(1)
    assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]


def test_a_signal_inside_an_import_is_held_until_the_import_is_done(tmp_path, monkeypatch):
    """Raised inside torch's C++ module setup, the KeyboardInterrupt aborted the process ('terminate called after
    throwing an instance of pybind11::error_already_set', exit 134, 80 lines): inside an import it only sets the
    event, which main() and every command check."""
    import importlib

    from napari_treg.cli import commands

    (tmp_path / "importing_module.py").write_text("import sys\nFRAME = sys._getframe()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    inside = importlib.import_module("importing_module").FRAME
    commands._interrupted.clear()
    commands._interrupt(signal.SIGTERM, inside)
    assert commands._interrupted.is_set()
    commands._interrupted.clear()
    with pytest.raises(KeyboardInterrupt):
        commands._interrupt(signal.SIGTERM, sys._getframe())
    assert commands._interrupted.is_set()
    commands._interrupted.clear()
