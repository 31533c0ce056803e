"""The text-conflict warning in the restore widget (issue 20): in the status line and as a napari warning, in
plain words with the evidence under Details (issue 35); none for the tiny test model, which reads no text."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import notification_manager

import napari_treg
from napari_treg.models.analytic import template
from napari_treg.operators import GaussianBlur


def _blurred_disk(viewer):
    y = napari_treg.degrade(template("disk", (32, 32)), GaussianBlur(1.5), noise=0.01, seed=0)
    return viewer.add_image(np.asarray(y, np.float32), name="y", colormap="gray")


def _run(widget, run_to_end, prompt, samples=1, steps=60):
    _blurred_disk(widget.viewer)
    widget.model.value = "analytic"
    widget.operator.value = "gauss"
    widget.sigma.value = 1.5
    widget.noise.value = 0.01
    widget.steps.value = steps
    widget.samples.value = samples
    widget.prompt.value = prompt
    run_to_end(widget)


#: how the status and the notification start the warning (the evidence, "Text conflict ...", is under Details)
PULLED = "The prompt pulled the result away from the measurement"


def _warnings() -> list[str]:
    return [str(record.message) for record in notification_manager.records if PULLED in str(record.message)]


def test_a_prompt_the_data_rule_out_is_warned_in_the_status_and_a_notification(restore_widget, run_to_end):
    _run(restore_widget, run_to_end, "a square")
    record = restore_widget.viewer.layers["y TReg"].metadata["treg"]
    assert record["text_conflict"]["flag"]
    assert PULLED in restore_widget.status.value and "nats" not in restore_widget.status.value
    assert "Text conflict" in restore_widget.details.value
    assert len(_warnings()) == 1


def test_a_prompt_that_matches_the_data_is_not_warned(restore_widget, run_to_end):
    _run(restore_widget, run_to_end, "a disk")
    record = restore_widget.viewer.layers["y TReg"].metadata["treg"]
    assert record["text_conflict"]["checked"] and not record["text_conflict"]["flag"]
    assert PULLED not in restore_widget.status.value and "Text conflict" not in restore_widget.details.value
    assert _warnings() == []


def test_an_ensemble_with_a_prompt_the_data_rule_out_is_warned_as_a_single_run(restore_widget, run_to_end):
    _run(restore_widget, run_to_end, "a square", samples=2, steps=30)
    record = restore_widget.viewer.layers["y TReg mean"].metadata["treg"]
    assert record["text_conflict"]["flag"] and record["text_conflict"]["samples"] == 2
    assert f"{PULLED} (in 2 of 2 planes/tiles)" in restore_widget.status.value
    assert "Text conflict in 2 of 2 planes/tiles over the 2 samples" in restore_widget.details.value
    assert len(_warnings()) == 1


def test_an_ensemble_with_a_matching_prompt_is_not_warned(restore_widget, run_to_end):
    _run(restore_widget, run_to_end, "a disk", samples=2, steps=30)
    record = restore_widget.viewer.layers["y TReg mean"].metadata["treg"]
    assert record["text_conflict"]["checked"] and not record["text_conflict"]["flag"]
    assert PULLED not in restore_widget.status.value and "Text conflict" not in restore_widget.details.value
    assert _warnings() == []


def test_a_run_the_check_could_not_read_says_so_in_the_status(restore_widget, run_to_end):
    _run(
        restore_widget, run_to_end, "a square", steps=1
    )  # one step: no evidence (tests/solver/test_conflict_schedules.py)
    record = restore_widget.viewer.layers["y TReg"].metadata["treg"]
    assert not record["text_conflict"]["checked"]
    status = restore_widget.status.value
    assert "Whether the prompt fits the measurement was not checked: the run had too few steps" in status
    assert "data-consistency" not in status  # the method's terms are under Details
    assert "The text-conflict check was not made: no evidence" in restore_widget.details.value
    assert _warnings() == []


def test_a_checked_run_says_nothing_about_the_check(restore_widget, run_to_end):
    _run(restore_widget, run_to_end, "a disk", steps=8)
    assert "not checked" not in restore_widget.status.value


def test_the_tiny_model_with_a_samples_prompt_raises_no_warning(make_napari_viewer, run_to_end):
    """Issue 35.5: every tiny-model run with a sample's prompts warned of a text conflict (its text encoder is
    random), which teaches users to ignore the warning."""
    from napari_treg.plugin.demo import open_demo

    viewer = make_napari_viewer()
    widget = open_demo(viewer, "photograph_inpainting", model="tiny", steps=4)
    widget.device.value, widget.preview.value = "cpu", False
    run_to_end(widget)
    assert widget.status.value.startswith("Done")
    warned = [str(record.message) for record in notification_manager.records if "onflict" in str(record.message)]
    assert warned == [] and PULLED not in widget.status.value and "⚠" not in widget.status.value
