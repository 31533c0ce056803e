"""Cancel at any point returns nothing, and the next run works (napari_treg.api, the CLI).

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from napari_treg import api, restore
from napari_treg.cli import commands as cli
from napari_treg.errors import (
    Cancelled,
)
from napari_treg.operators import Denoising

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------ faults: cancel


@pytest.mark.issue6
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
@pytest.mark.issue6
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


@pytest.mark.issue6
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
