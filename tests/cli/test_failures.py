"""napari_treg.failures: one error -> (message, exit status) mapping, used by the CLI and the widgets alike."""

from __future__ import annotations

import pytest

from napari_treg.cli import commands as cli
from napari_treg.errors import (
    Cancelled,
    DivergenceError,
    InvalidInputError,
    ModelNotFoundError,
    OutOfMemoryError,
    TRegError,
    UnitOutOfMemory,
)
from napari_treg.failures import describe_failure, first_sentence
from napari_treg.io import files as io
from napari_treg.plugin.messages import explain_error, headline

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"

ERRORS = [
    (KeyboardInterrupt(), "cancelled", 130),
    (Cancelled("stop"), "cancelled", 130),
    (InvalidInputError("the mask is 3x3"), "input", 2),
    (ValueError("steps must be positive"), "input", 2),
    (ModelNotFoundError("weights missing"), "model", 1),
    (OutOfMemoryError("out of accelerator memory (x). The memory was released"), "memory", 1),
    (RuntimeError(CUDA_OOM), "memory", 1),
    (MemoryError(), "memory", 1),
    (UnitOutOfMemory("out of accelerator memory on a worker", "tcp://127.0.0.1:4000"), "memory", 1),
    (DivergenceError("NaN at step 3"), "diverged", 1),
    (TRegError("something of ours"), "failed", 1),
    (OSError("disk full"), "failed", 1),
    (ImportError("no module named diffusers"), "failed", 1),
]


@pytest.mark.parametrize("error, kind, status", ERRORS, ids=[type(e[0]).__name__ + e[1] for e in ERRORS])
def test_each_error_has_one_kind_and_exit_status(error, kind, status):
    failure = describe_failure(error)
    assert (failure.kind, failure.exit_status) == (kind, status)
    assert failure.message


def test_a_units_out_of_memory_travels_from_its_worker_with_the_workers_address():
    import pickle

    error = pickle.loads(pickle.dumps(UnitOutOfMemory("out of memory", "tcp://127.0.0.1:4000")))
    assert isinstance(error, UnitOutOfMemory) and not isinstance(error, MemoryError)
    assert (str(error), error.worker) == ("out of memory", "tcp://127.0.0.1:4000")


@pytest.mark.parametrize("error", [KeyError("x"), RuntimeError("an unforeseen bug"), TypeError("bad call")])
def test_bugs_are_not_explained_away(error):
    assert describe_failure(error) is None


@pytest.mark.parametrize("error, kind, status", ERRORS[1:], ids=[type(e[0]).__name__ + e[1] for e in ERRORS[1:]])
def test_the_cli_prints_the_mapped_message_with_the_mapped_status(error, kind, status, monkeypatch, capsys, tmp_path):
    def failing_read(path):
        raise error

    monkeypatch.setattr(io, "read_image", failing_read)
    assert cli.main(["degrade", str(tmp_path / "y.tif"), "-o", str(tmp_path / "x.tif"), "--operator", "denoise"]) == (
        status
    )
    err = capsys.readouterr().err
    message = describe_failure(error).message
    if status == 130:
        assert err == f"napari-treg: {message}\n"
    else:
        assert err == f"napari-treg: error: {' '.join(message.split())}\n"


def test_the_cli_lets_bugs_raise(monkeypatch, tmp_path):
    def failing_read(path):
        raise KeyError("a bug")

    monkeypatch.setattr(io, "read_image", failing_read)
    with pytest.raises(KeyError):
        cli.main(["degrade", str(tmp_path / "y.tif"), "-o", str(tmp_path / "x.tif"), "--operator", "denoise"])


def test_the_widget_leads_with_the_cli_text_and_adds_what_to_do_in_the_widget():
    for error in (ModelNotFoundError("/m is not a model file: use a diffusers folder"), RuntimeError(CUDA_OOM)):
        cli_text = describe_failure(error).message
        widget_text = explain_error(error)
        assert first_sentence(cli_text).rstrip(".").lower() in headline(widget_text).lower()
        assert cli_text.lower() in widget_text.lower()  # the whole of it, one click away
    assert "tiny test model" in explain_error(ModelNotFoundError("weights missing"))
    assert "current plane" in explain_error(RuntimeError(CUDA_OOM))
    assert headline(explain_error(RuntimeError(CUDA_OOM))).startswith("Out of accelerator memory (CUDA out of memory.")


@pytest.mark.parametrize(
    "text, first",
    [
        ("one. Two.", "one."),
        ("no full stop", "no full stop"),
        (
            "out of memory (CUDA out of memory. Tried 2 GiB). The memory was released",
            "out of memory (CUDA out of memory. Tried 2 GiB).",
        ),
        (
            "weights (repo): not in the cache (/root/.cache/hub), offline.\nTo get them, run",
            "weights (repo): not in the cache (/root/.cache/hub), offline.",
        ),
        ("a folder is missing: tokenizer.json\nTo try the tiny model", "a folder is missing: tokenizer.json"),
        ("use e.g. 512 pixels. Then run", "use e.g. 512 pixels."),
    ],
)
def test_first_sentence(text, first):
    assert first_sentence(text) == first
