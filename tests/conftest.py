"""Shared test settings, and fixtures for the napari plugin tests (``make_napari_viewer`` runs under Xvfb)."""

from __future__ import annotations

import os

import pytest

# tests never reach the Hugging Face hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The test tensors are small: one thread is fastest, and immune to other jobs on 2 shared cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """The tiny random-weight Stable Diffusion prior (seed 0), built once per test module."""
    from napari_treg.models.tiny import build_tiny_prior

    return build_tiny_prior(seed=0)


@pytest.fixture(autouse=True)
def fresh_notifications():
    """Each test sees only its own napari notifications (the manager's record list is process-wide)."""
    try:
        from napari.utils.notifications import notification_manager
    except ImportError:  # the napari extra is not installed: no notifications to reset
        yield
        return
    notification_manager.records.clear()
    yield


@pytest.fixture
def restore_widget(make_napari_viewer):
    """A docked "Restore (TReg)" widget set to the tiny test model and 4 steps."""
    from napari_treg.plugin.restore_widget import RestoreWidget

    viewer = make_napari_viewer()
    widget = RestoreWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Restore (TReg)")
    widget.model.value = "tiny"
    widget.device.value = "cpu"
    widget.steps.value = 4
    return widget


@pytest.fixture
def run_to_end(qtbot):
    """``run_to_end(widget)``: press Run and wait until the worker has finished."""

    def run(widget, timeout_ms: int = 120_000):
        worker = widget.run()
        assert worker is not None, "the run did not start"
        qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout_ms)
        return worker

    return run
