"""The restore widget's Samples control in a real napari viewer (Xvfb): an ensemble's maps as layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_treg.engine.ensemble import MAX_SAMPLES
from napari_treg.errors import InvalidInputError
from napari_treg.plugin import restore_widget as restore_module
from napari_treg.plugin.messages import CANCELLED
from napari_treg.plugin.restoration import check_ensemble_request

MAPS = {" mean": "gray", " std": "magma", " data share": "PiYG", " text influence": "inferno"}


def _measurement(viewer, name="y"):
    data = np.random.default_rng(0).uniform(0, 1, (32, 32)).astype(np.float32)
    return viewer.add_image(data, name=name, colormap="gray")


def _steps(widget) -> list:
    """Every progress event the widget receives with the status line it shows, in order."""
    events = []

    def record(name, args):  # connected after the widget's handler: the status line is already updated
        if name == "step":
            events.append((args[0], widget.status.value))

    widget.relay.called.connect(record)
    return events


def test_samples_default_to_one_restore_and_offer_the_ensembles_range(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    _measurement(viewer)
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 2
    assert restore_widget.samples.value == 1
    assert (restore_widget.samples.min, restore_widget.samples.max) == (1, MAX_SAMPLES)
    run_to_end(restore_widget)
    assert [layer.name for layer in viewer.layers] == ["y", "y TReg"]
    assert "treg_map" not in viewer.layers["y TReg"].metadata
    assert not viewer.canvas.grid.enabled


def test_an_ensemble_adds_mean_std_data_share_and_text_influence_side_by_side(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    layer = _measurement(viewer)
    original = layer.data.copy()
    restore_widget.operator.value = "denoise"
    restore_widget.noise.value = 0.05
    restore_widget.steps.value = 2
    restore_widget.samples.value = 3
    restore_widget.prompt.value = "fluorescent nuclei"
    assert restore_widget.guidance.value > 0
    events = _steps(restore_widget)

    run_to_end(restore_widget)

    names = [f"y TReg{suffix}" for suffix in MAPS]
    assert [layer.name for layer in viewer.layers] == ["y", *names]
    mean = viewer.layers["y TReg mean"]
    record = mean.metadata["treg"]
    ensemble = record["ensemble"]
    assert ensemble["samples"] == 3 and len(ensemble["seeds"]) == 3 and ensemble["noise"] == pytest.approx(0.05)
    assert ensemble["noise_source"] == "given" and ensemble["text_influence"] is True
    assert record["settings"]["samples"] == 3 and record["params"]["prompt"] == "fluorescent nuclei"
    for suffix, colormap in MAPS.items():
        shown = viewer.layers[f"y TReg{suffix}"]
        assert shown.colormap.name == colormap and shown.visible
        assert shown.metadata["treg"] == record and shown.data.shape == (32, 32)
    share = viewer.layers["y TReg data share"]
    assert list(share.contrast_limits) == [0.0, 1.0]
    assert 0.0 <= share.data.min() and share.data.max() <= 1.0
    std = viewer.layers["y TReg std"].data
    assert std.min() >= 0 and std.max() > 0  # three seeds disagree somewhere
    assert viewer.layers["y TReg text influence"].data.max() > 0
    assert viewer.canvas.grid.enabled and "grid" in restore_widget.status.value
    zoom, center = viewer.camera.zoom, tuple(viewer.camera.center)
    viewer.reset_view()  # issue 35.5: the grid is fitted already (each tile showed a zoomed-in crop)
    assert viewer.camera.zoom == pytest.approx(zoom) and tuple(viewer.camera.center) == pytest.approx(center)
    np.testing.assert_array_equal(layer.data, original)
    # progress over all samples: 3 samples with the prompt and 3 without it (for the text influence), one
    # plane per model call on the CPU (batch_size auto = 1), 2 steps each
    assert record["params"]["batch_size"] == 1
    total = 2 * 3 * 2
    sampling = [(event, line) for event, line in events if event.phase == "sampling"]
    assert [event.step for event, _ in sampling] == list(range(1, total + 1))
    assert {event.total for event, _ in sampling} == {total} and ensemble["model_calls"] == total
    assert sampling[4][1] == f"Step 5 of {total} (ensemble of 3 samples)"
    # then the data share's probe solves, in the status line and the bar
    share = [(event, line) for event, line in events if event.phase == "data share"]
    solves = len(share)
    assert events[len(sampling) :] == share and [(e.step, e.total) for e, _ in share] == [
        (k, solves) for k in range(1, solves + 1)
    ]
    assert share[-1][1] == f"Data share: solve {solves} of {solves} (ensemble of 3 samples)"
    assert restore_widget.progress_bar.native.value() == solves == restore_widget.progress_bar.native.maximum()


def test_an_ensemble_without_prompt_has_no_text_influence_and_a_second_run_gets_its_own_names(
    restore_widget, run_to_end
):
    viewer = restore_widget.viewer
    _measurement(viewer)
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 1
    restore_widget.samples.value = 2
    restore_widget.prompt.value = ""
    run_to_end(restore_widget)
    run_to_end(restore_widget)
    assert [layer.name for layer in viewer.layers] == [
        "y",
        *(f"y TReg{suffix}" for suffix in (" mean", " std", " data share")),
        *(f"y TReg #2{suffix}" for suffix in (" mean", " std", " data share")),
    ]
    assert viewer.layers["y TReg mean"].metadata["treg"]["ensemble"]["noise_source"].startswith("estimated")


def test_a_cancelled_ensemble_adds_nothing(restore_widget, qtbot):
    viewer = restore_widget.viewer
    _measurement(viewer)
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 20
    restore_widget.samples.value = 4

    def cancel_at_third_step(name, args):
        if name == "step" and args[0].step == 3:
            restore_widget.cancel_button.native.click()

    restore_widget.relay.called.connect(cancel_at_third_step)
    restore_widget.run()
    qtbot.waitUntil(lambda: not restore_widget.is_running, timeout=120_000)
    assert [layer.name for layer in viewer.layers] == ["y"]
    assert restore_widget.status.value == CANCELLED and not viewer.canvas.grid.enabled


def test_bad_ensembles_are_refused_before_the_worker_starts(restore_widget, monkeypatch):
    viewer = restore_widget.viewer
    viewer.add_image(np.full((32, 32), 0.5, np.float32), name="flat")  # no noise to estimate
    restore_widget.operator.value = "denoise"
    with pytest.raises(ValueError, match="outside of the allowed range"):
        restore_widget.samples.value = MAX_SAMPLES + 1
    restore_widget.samples.value = 4
    started = []
    monkeypatch.setattr(restore_module, "start_worker", lambda *args: started.append(args))
    assert restore_widget.run() is None
    assert not started and "noise level was estimated as 0" in restore_widget.status.tooltip
    assert [layer.name for layer in viewer.layers] == ["flat"]
    restore_widget.noise.value = 0.05  # given, it need not be estimated
    request = restore_widget.make_request()
    request.samples = MAX_SAMPLES + 1  # e.g. a script's request: the ensemble's own range is checked
    with pytest.raises(InvalidInputError, match=f"samples must be .*{MAX_SAMPLES}"):
        check_ensemble_request(request)


def test_each_map_saved_as_ome_tiff_opens_as_the_same_layer(restore_widget, run_to_end, tmp_path):
    viewer = restore_widget.viewer
    _measurement(viewer)
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 1
    restore_widget.samples.value = 2
    restore_widget.prompt.value = "fluorescent nuclei"
    run_to_end(restore_widget)
    for suffix, colormap in MAPS.items():
        layer = viewer.layers[f"y TReg{suffix}"]
        path = tmp_path / f"map{suffix.replace(' ', '_')}.ome.tif"
        viewer.layers.selection.active = layer
        viewer.layers.save(str(path), selected=True, plugin="napari-treg")
        (opened,) = viewer.open(str(path), plugin="napari-treg")
        assert opened.name == f"{layer.name} [1]" and opened.colormap.name == colormap  # napari makes it unique
        np.testing.assert_array_equal(opened.data, layer.data)
        np.testing.assert_allclose(opened.contrast_limits, layer.contrast_limits)
        assert opened.metadata == layer.metadata and opened.metadata["treg_map"] == suffix.strip().replace(" ", "_")


@pytest.mark.parametrize(
    "shape, rgb, mean_shape, map_shape",
    [((32, 32, 3), True, (32, 32, 3), (32, 32)), ((3, 32, 32), False, (1, 32, 32), (1, 32, 32))],
)
def test_rgb_maps_are_one_channel_and_a_stacks_plane_maps_lie_on_it(
    restore_widget, run_to_end, shape, rgb, mean_shape, map_shape
):
    viewer = restore_widget.viewer
    data = (np.random.default_rng(1).uniform(0, 1, shape) * 255).astype(np.uint8)
    layer = viewer.add_image(data, name="y", rgb=rgb)
    if not rgb:
        viewer.dims.set_point(0, 2)  # the third plane is shown: a current-plane run restores it
    restore_widget.operator.value = "denoise"
    restore_widget.steps.value = 1
    restore_widget.samples.value = 2
    restore_widget.prompt.value = ""
    run_to_end(restore_widget)
    mean = viewer.layers["y TReg mean"]
    assert mean.rgb is rgb and mean.data.shape == mean_shape
    for suffix in (" std", " data share"):
        shown = viewer.layers[f"y TReg{suffix}"]
        assert not shown.rgb and shown.data.shape == map_shape and shown.colormap.name == MAPS[suffix]
        np.testing.assert_allclose(shown.translate, mean.translate)
    if not rgb:
        assert mean.translate[0] == layer.translate[0] + 2 and mean.metadata["treg"]["plane_index"] == [2]


def test_the_held_out_check_runs_from_the_widget_and_says_its_verdict(restore_widget, run_to_end):
    viewer = restore_widget.viewer
    _measurement(viewer)
    restore_widget.operator.value = "denoise"
    restore_widget.noise.value = 0.05
    restore_widget.steps.value = 2
    restore_widget.prompt.value = ""
    assert restore_widget.holdout.value is False  # off by default: the ensemble is as before
    restore_widget.holdout.value = True
    restore_widget.samples.value = 1
    assert restore_widget.run() is None
    said = restore_widget.status.value + restore_widget.status_panel.details.value  # one sentence: all in the status
    assert "samples to 4 or more" in said
    restore_widget.samples.value = 4
    run_to_end(restore_widget)
    check = viewer.layers["y TReg mean"].metadata["treg"]["ensemble"]["holdout"]
    assert check["fraction"] == 0.1 and check["values"] == round(0.1 * 32 * 32)
    assert f"Held-out check: {check['coverage_before']:.0%} of 90% covered" in restore_widget.status.value
    uncorrected = viewer.layers["y TReg uncorrected std"]  # the std before the check, hidden, with the run's record
    assert not uncorrected.visible and uncorrected.metadata["treg"] == viewer.layers["y TReg std"].metadata["treg"]
