"""The restore widget's status line and progress bar in a real viewer (issue 22, points 1 and 2):
a failure's reason stays in the status line with the rest a click away, the bar is reset
after a failure and a cancel, and a warning (e.g. a text conflict) reaches the status and napari."""

from __future__ import annotations

import numpy as np
import pytest
from napari.utils.notifications import NotificationSeverity, notification_manager

from napari_treg.failures import describe_failure, first_sentence
from napari_treg.plugin.messages import CANCELLED
from napari_treg.plugin.status import WARNING_MARK


def _messages(severity) -> list[str]:
    return [n.message for n in notification_manager.records if n.severity == severity]


def _image(shape=(32, 32)):
    return np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)


def _bar_is_idle(widget) -> bool:
    bar = widget.progress_bar.native
    return bar.maximum() > 0 and bar.value() <= 0  # max 0 is Qt's busy animation


@pytest.fixture
def empty_offline_hub(tmp_path, monkeypatch):
    """No Stable Diffusion weights anywhere and no network: what a new user without the download has."""
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


def test_missing_default_weights_the_status_says_why_like_the_cli(restore_widget, run_to_end, empty_offline_hub):
    from napari_treg.models import load_model
    from napari_treg.models.loading import clear_model_cache

    clear_model_cache()
    with pytest.raises(Exception) as raised:  # what the CLI prints for the same failure
        load_model("sd15", device="cpu")
    cli_text = describe_failure(raised.value).message
    restore_widget.viewer.add_image(_image(), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.model.value = "sd15"
    run_to_end(restore_widget)

    status = restore_widget.status.value
    first = cli_text.split("\n")[0]
    assert "not in the Hugging Face cache" in first and first in status, (first, status)
    assert "hf download" not in status  # the rest is one click away
    panel = restore_widget.status_panel
    assert not panel.details_shown and not restore_widget.details_button.native.isHidden()
    restore_widget.details_button.native.click()
    assert panel.details_shown
    details = restore_widget.details.value
    assert "hf download" in details and "tiny test model" in details
    rest = cli_text.strip()[len(first_sentence(cli_text.strip())) :]
    assert " ".join(rest.split()) in " ".join(details.split())  # the rest of the CLI's text
    assert first_sentence(cli_text) not in details  # issue 35.5: Details add to the headline, not repeat it
    assert " ".join(cli_text.split()) in " ".join(restore_widget.status.tooltip.split())  # the whole text
    assert _bar_is_idle(restore_widget)
    restore_widget.details_button.native.click()
    assert not panel.details_shown
    # it stays: later events (a new layer, a model change) do not wipe it
    restore_widget.viewer.add_image(_image(), name="z")
    assert restore_widget.status.value == status


def test_the_progress_bar_is_reset_after_a_failure(restore_widget, run_to_end, tmp_path):
    restore_widget.viewer.add_image(_image(), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.model.value = "folder"
    restore_widget.model_path.value = tmp_path  # not a model: fails while loading, with a busy bar
    busy = []
    restore_widget.relay.called.connect(lambda name, args: busy.append(restore_widget.progress_bar.native.maximum()))
    run_to_end(restore_widget)
    assert 0 in busy  # it was busy (loading)
    assert _bar_is_idle(restore_widget) and restore_widget.progress_bar.native.text() == ""
    assert _messages(NotificationSeverity.ERROR)


def test_the_progress_bar_is_reset_after_a_cancel(restore_widget, qtbot):
    restore_widget.viewer.add_image(_image(), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 50

    def cancel_at_step_two(name, args):
        if name == "step" and args[0].step == 2:
            restore_widget.cancel()

    restore_widget.relay.called.connect(cancel_at_step_two)
    restore_widget.run()
    qtbot.waitUntil(lambda: not restore_widget.is_running, timeout=120_000)
    assert restore_widget.status.value == CANCELLED
    assert _bar_is_idle(restore_widget)
    assert restore_widget.details_button.native.isHidden()


def test_a_failure_is_replaced_by_the_next_run(restore_widget, run_to_end):
    restore_widget.viewer.add_image(_image(), name="y")
    restore_widget.operator.value = "inpaint"  # no mask: fails before a worker starts
    assert restore_widget.run() is None
    assert restore_widget.status.value.startswith("Cannot restore: choose the mask")
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 1
    run_to_end(restore_widget)
    assert restore_widget.status.value.startswith("Done")
    assert "Cannot restore" not in restore_widget.status.value + restore_widget.details.value  # the failure is gone


def test_a_warning_goes_to_the_status_and_to_napari(restore_widget, run_to_end):
    restore_widget.viewer.add_image(_image(), name="y")
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 1
    run_to_end(restore_widget)
    summary = restore_widget.status.value
    text = "the prompt asks for structures the measurement does not show"
    restore_widget.warn(text)
    assert (
        restore_widget.status.value
        == f"{summary}\n{WARNING_MARK}The prompt asks for structures the measurement does not show"
    )
    assert f"TReg: {text}" in _messages(NotificationSeverity.WARNING)
