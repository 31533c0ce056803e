"""Offline, no telemetry, no pickle (napari_treg.models, napari_treg.io.files).

(moved from tests/test_reliability.py; markers: issue6 (reliability), issue12 (trust, round two))
"""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch

from napari_treg import restore
from napari_treg.errors import (
    InvalidInputError,
    ModelNotFoundError,
)
from napari_treg.io import files as io
from napari_treg.operators import Denoising

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ------------------------------------------------------------------------------ security


@pytest.mark.issue6
def test_no_socket_is_opened_offline(tiny, monkeypatch):
    """Offline, a missing hub model fails without touching the network; local models never do."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    restore(np.zeros((16, 16)), Denoising(), model="tiny", device="cpu", steps=1)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE"):
        restore(np.zeros((16, 16)), Denoising(), model="someone/some-model", device="cpu", steps=1)
    assert attempts == []


@pytest.mark.issue6
def test_loading_a_model_turns_telemetry_off(monkeypatch):
    import diffusers.utils.hub_utils as diffusers_hub
    from huggingface_hub import constants

    from napari_treg.models import load_model

    monkeypatch.delenv("HF_HUB_DISABLE_TELEMETRY", raising=False)
    monkeypatch.delenv("DISABLE_TELEMETRY", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", False)
    monkeypatch.setattr(diffusers_hub, "HF_HUB_DISABLE_TELEMETRY", False)
    load_model("tiny", device="cpu")
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1" and os.environ["DISABLE_TELEMETRY"] == "1"
    assert constants.HF_HUB_DISABLE_TELEMETRY is True and diffusers_hub.HF_HUB_DISABLE_TELEMETRY is True


@pytest.mark.issue6
def test_safetensors_loading_reads_no_pickle(tmp_path, monkeypatch):
    """A .safetensors file is checked without torch.load (so without unpickling anything)."""
    from safetensors.torch import save_file

    from napari_treg.models import load_model

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load was called on a safetensors file")

    monkeypatch.setattr(torch, "load", no_pickles)
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelNotFoundError, match="not a Stable Diffusion 1.x checkpoint"):
        load_model(tmp_path / "other.safetensors", device="cpu")


@pytest.mark.issue6
def test_io_reads_npy_without_pickle(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises((InvalidInputError, ValueError, OSError)):
        io.read_image(tmp_path / "objects.npy")
