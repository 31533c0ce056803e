"""Device and dtype choice (models/devices.py): names, defaults per device, errors that list the choices."""

from __future__ import annotations

import pytest
import torch

from napari_treg.errors import InvalidInputError
from napari_treg.models import resolve_device, resolve_dtype


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type != "cuda"
        with pytest.raises(InvalidInputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    with pytest.raises(InvalidInputError) as info:
        resolve_device("tpu")
    assert all(name in str(info.value) for name in ("auto", "cpu", "cuda", "mps"))


@pytest.mark.parametrize(
    "given, expected",
    [
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("float32", torch.float32),
        ("torch.float32", torch.float32),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_resolve_dtype(given, expected):
    assert resolve_dtype(given, torch.device("cpu")) == expected


def test_dtype_defaults_and_errors():
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("mps")) == torch.float32
    for bad in ("int8", torch.int32, 3):
        with pytest.raises(InvalidInputError, match="dtype"):
            resolve_dtype(bad, torch.device("cpu"))
