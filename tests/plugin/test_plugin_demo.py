"""The demo and the samples in a real viewer (issue 22, point 3): each sample brings a fitting prompt and
negative prompt, so the first Run shows what text guidance does."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.plugin.demo import SAMPLES, open_demo
from napari_treg.plugin.restore_form import TEXT_DEFAULTS
from napari_treg.plugin.sample_data import TEXT_PRESETS


def test_every_sample_has_a_text_preset():
    assert set(TEXT_PRESETS) == set(SAMPLES)
    for prompt, negative in TEXT_PRESETS.values():
        assert prompt and negative and prompt != negative


@pytest.mark.parametrize("sample", SAMPLES)
def test_the_demo_opens_with_the_samples_prompt(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    widget = open_demo(viewer, sample, model="tiny", steps=1)
    prompt, negative = TEXT_PRESETS[sample]
    assert (widget.prompt.value, widget.negative_prompt.value) == (prompt, negative)
    assert "treg_simulation" in widget.image.value.metadata


def test_the_first_run_uses_the_preset_text(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget = open_demo(viewer, "fluorescence_blur", model="tiny", steps=1)
    widget.device.value = "cpu"
    widget.preview.value = False
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: not widget.is_running, timeout=240_000)
    params = viewer.layers.selection.active.metadata["treg"]["params"]
    assert (params["prompt"], params["negative_prompt"]) == TEXT_PRESETS["fluorescence_blur"]


def test_the_text_follows_the_layer_unless_the_user_wrote_it(make_napari_viewer):
    viewer = make_napari_viewer()
    widget = open_demo(viewer, "photograph_sr", model="tiny")
    plain = viewer.add_image(np.zeros((32, 32), np.float32), name="plain")
    widget.image.value = plain  # the sample's text was the sample's: back to the defaults
    assert (widget.prompt.value, widget.negative_prompt.value) == tuple(TEXT_DEFAULTS.values())

    widget.image.value = viewer.layers["astronaut (4x downsampled)"]
    assert widget.prompt.value == TEXT_PRESETS["photograph_sr"][0]
    widget.prompt.value = "my own words"
    widget.image.value = plain  # the user's text stays
    assert widget.prompt.value == "my own words"
