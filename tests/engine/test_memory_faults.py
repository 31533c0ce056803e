"""Out of memory is recognised, explained and released (napari_treg.memory).

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch

from napari_treg import api, memory, restore
from napari_treg.cli import commands as cli
from napari_treg.errors import (
    OutOfMemoryError,
    TRegError,
)
from napari_treg.operators import Denoising

os.environ.setdefault("HF_HUB_OFFLINE", "1")


QUICK = dict(steps=2, dc_every=1, dc_until=1.0, negation_steps=1)


def _run_python(code: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=PYTHON_ENV, timeout=timeout)


def _single_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


PYTHON_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# ------------------------------------------------------------------------------ faults: out of memory


class _FailOnce:
    """Wraps ``prior.predict_noise``: the first call raises ``error``, later calls work."""

    def __init__(self, prior, error: BaseException):
        self.original = prior.predict_noise
        self.error: BaseException | None = error
        self.seen: list[weakref.ref] = []

    def __call__(self, z, t, text):
        if self.error is not None:
            error, self.error = self.error, None
            self.seen.append(weakref.ref(z))
            raise type(error)(*error.args)  # a fresh one: the template keeps no traceback
        return self.original(z, t, text)


@pytest.mark.parametrize(
    "error",
    [
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
        RuntimeError("CUDA error: out of memory"),
    ],
    ids=["cuda", "mps", "runtime"],
)
@pytest.mark.issue6
def test_out_of_memory_is_clear_releases_memory_and_a_retry_works(tiny, monkeypatch, error):
    image = np.random.default_rng(4).random((16, 16)).astype(np.float32)
    expected = restore(image, Denoising(), model=tiny, **QUICK)
    freed = []
    monkeypatch.setattr(memory, "free_accelerator_memory", lambda: freed.append(gc.collect()))
    fail = _FailOnce(tiny, error)
    monkeypatch.setattr(tiny, "predict_noise", fail)
    with pytest.raises(OutOfMemoryError) as caught:
        restore(image, Denoising(), model=tiny, **QUICK)
    assert isinstance(caught.value, MemoryError) and isinstance(caught.value, TRegError)
    message = str(caught.value)
    assert all(word in message for word in ("batch_size", "low-memory", "tiling", "device='cpu'"))
    assert caught.value.__context__ is None and caught.value.__cause__ is None  # no traceback keeps tensors
    assert freed, "memory was not released"
    assert fail.seen[0]() is None, "the failed run's latents are still referenced"
    np.testing.assert_array_equal(restore(image, Denoising(), model=tiny, **QUICK), expected)


@pytest.mark.issue6
def test_out_of_memory_while_loading_is_clear(monkeypatch):
    def failing_load(model, device, dtype):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory while loading")

    monkeypatch.setattr(api, "_load", failing_load)
    with pytest.raises(OutOfMemoryError, match="device='cpu'"):
        restore(np.zeros((16, 16)), Denoising(), model="sd15")


@pytest.mark.issue6
def test_other_runtime_errors_pass_through_unchanged(tiny, monkeypatch):
    def broken(z, t, text):
        raise RuntimeError("shape mismatch in attention")

    monkeypatch.setattr(tiny, "predict_noise", broken)
    with pytest.raises(RuntimeError, match="shape mismatch") as caught:
        restore(np.zeros((16, 16)), Denoising(), model=tiny, steps=1)
    assert not isinstance(caught.value, OutOfMemoryError)


# ------------------------------------------------------------------------------ the allocation recogniser

ALLOCATION_FAILURES = {
    "numpy": (MemoryError("Unable to allocate 6.94 EiB for an array with shape (1000000001, 1000000001)"), "host"),
    "cpu": (
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
            "memory: you tried to allocate 32000000000 bytes. Error code 12"
        ),
        "host",
    ),
    "windows": (RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 bytes."), "host"),
    "cuda": (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "accelerator"),
    "cuda runtime": (RuntimeError("CUDA error: out of memory"), "accelerator"),
    "mps": (RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"), "accelerator"),
}


@pytest.mark.parametrize("name", ALLOCATION_FAILURES)
@pytest.mark.issue12
def test_allocation_failures_of_every_device_are_recognised(name):
    error, where = ALLOCATION_FAILURES[name]
    assert memory.allocation_failure(error) == where
    converted = memory.out_of_memory_error(error)
    assert isinstance(converted, OutOfMemoryError) and "\n" not in str(converted)
    assert str(converted).startswith(f"out of {'host' if where == 'host' else 'accelerator'} memory")


@pytest.mark.parametrize("error", [RuntimeError("shape mismatch"), ValueError("out of memory"), OSError("disk")])
@pytest.mark.issue12
def test_other_errors_are_not_allocation_failures(error):
    assert memory.allocation_failure(error) is None


@pytest.mark.issue12
def test_a_cpu_allocation_failure_during_restore_is_out_of_memory(tiny, monkeypatch):
    error = ALLOCATION_FAILURES["cpu"][0]
    monkeypatch.setattr(tiny, "predict_noise", _FailOnce(tiny, error))
    with pytest.raises(OutOfMemoryError, match="out of host memory.*smaller image"):
        restore(np.zeros((16, 16)), Denoising(), model=tiny, **QUICK)


@pytest.mark.parametrize("name", ["numpy", "cpu"])
@pytest.mark.issue12
def test_cli_allocation_failures_are_one_line_exit_1(tmp_path, capsys, monkeypatch, name):
    error = ALLOCATION_FAILURES[name][0]

    def failing_degrade(*args, **kwargs):
        raise type(error)(*error.args)

    monkeypatch.setattr(api, "degrade", failing_degrade)
    np.save(tmp_path / "in.npy", np.zeros((16, 16)))
    argv = ["degrade", str(tmp_path / "in.npy"), "-o", str(tmp_path / "o.npy"), "--operator", "denoise", "-q"]
    assert cli.main(argv) == 1
    assert _one_line(capsys).startswith("napari-treg: error: out of host memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS behaves like this on Linux")
@pytest.mark.issue12
def test_cli_under_a_host_memory_limit_is_one_line_exit_1(tmp_path):
    """A real allocation failure: factor-32 super-resolution with 300 MB of address space to spare."""
    np.save(tmp_path / "in.npy", np.random.default_rng(2).random((96, 96)).astype(np.float32))
    code = f"""
import resource, sys
import torch, numpy, napari_treg.api, napari_treg.cli.commands as cli
from napari_treg.models import load_model
load_model("tiny", device="cpu")
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + 300 * 2**20, resource.RLIM_INFINITY))
sys.exit(cli.main(["restore", r"{tmp_path}/in.npy", "-o", r"{tmp_path}/o.npy", "--operator", "sr",
                   "--factor", "32", "--model", "tiny", "--steps", "1", "--device", "cpu", "-q"]))
"""
    run = _run_python(code)
    assert run.returncode == 1, run.stderr
    assert _single_error_line(run.stderr).startswith("napari-treg: error: out of host memory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy"]
