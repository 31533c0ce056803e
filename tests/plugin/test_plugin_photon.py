"""Photon noise in the widgets: Simulate makes Poisson-Gaussian measurements, Restore pre-fills the model."""

from __future__ import annotations

import numpy as np
import pytest
from noise_helpers import CAMERA, camera_image, write_ome

from napari_treg.noise import PoissonGaussian
from napari_treg.plugin import restore_form
from napari_treg.plugin.simulate_widget import SimulateWidget


def shown(widget) -> bool:
    """Whether the form shows the field (its own flag: the test viewer's window itself is not shown)."""
    return not widget.native.isHidden()


def clean_adu(size: int = 96) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
    return (100.0 + 2.0 * (5.0 + 395.0 * np.exp(-(rows**2 + cols**2) / (2 * (size / 5) ** 2)))).astype(np.float32)


def test_simulate_then_restore_with_the_estimated_poisson_gaussian_model(restore_widget):
    viewer = restore_widget.viewer
    clean = viewer.add_image(clean_adu(), name="spot")
    simulate = SimulateWidget(viewer)
    viewer.window.add_dock_widget(simulate, name="Simulate")
    simulate.image.value = clean
    simulate.operator.value = "denoise"
    assert not shown(simulate.gain)
    simulate.noise_model.value = "poisson-gaussian"
    assert shown(simulate.gain) and not shown(simulate.noise)
    simulate.gain.value, simulate.read_sd.value, simulate.offset.value = 2.0, 3.0, 100.0
    measurement = simulate.simulate()
    assert measurement.metadata["treg_simulation"]["noise_model"] == {"gain": 2.0, "read_sd": 3.0, "offset": 100.0}
    assert "photon noise gain 2 read sd 3" in measurement.name
    residual = measurement.data - clean.data
    assert residual.var() == pytest.approx(float(np.mean(2.0 * (clean.data - 100.0) + 9.0)), rel=0.1)

    restore_widget.image.value = measurement
    restore_widget.noise_model.value = "poisson-gaussian"
    assert shown(restore_widget.gain) and restore_widget.noise_estimate.value.startswith("Estimated from 'spot")
    assert restore_widget.gain.value == pytest.approx(2.0, rel=0.3)
    settings = restore_form.read_settings(restore_widget, rgb=False)
    assert settings.run.noise_model == "poisson-gaussian" and settings.run.gain == restore_widget.gain.value
    assert settings.run.noise is None
    restore_widget.noise_model.value = "gaussian"
    assert restore_form.read_settings(restore_widget, rgb=False).run.gain is None
    assert shown(restore_widget.noise) and not shown(restore_widget.gain)


def test_a_layer_the_model_cannot_be_estimated_on_says_why(restore_widget):
    flat = restore_widget.viewer.add_image(np.full((96, 96), 300.0, np.float32), name="flat")
    restore_widget.image.value = flat
    restore_widget.noise_model.value = "poisson-gaussian"
    assert (
        "Not estimated" in restore_widget.noise_estimate.value
        and "give gain and read_sd" in restore_widget.noise_estimate.value
    )


def test_the_photon_limited_sample_is_measured_with_its_camera_and_the_estimate_finds_it():
    from napari_treg.noise import estimate_poisson_gaussian
    from napari_treg.plugin.sample_data import SAMPLE_CAMERA, fluorescence_photons

    (clean, _, _), (measured, kwargs, _) = fluorescence_photons()
    record = kwargs["metadata"]["treg_simulation"]
    assert record["noise_model"] == SAMPLE_CAMERA.as_dict() and record["noise"] is None
    assert record["prompt"] and record["operator"] == {"name": "gauss", "sigma": 1.0}
    estimate = estimate_poisson_gaussian(measured, offset=SAMPLE_CAMERA.offset)
    assert estimate.gain == pytest.approx(SAMPLE_CAMERA.gain, rel=0.3)
    assert estimate.variance(200.0) == pytest.approx(SAMPLE_CAMERA.variance(200.0), rel=0.3)


def test_the_fields_take_the_gain_and_offset_an_ome_file_records(restore_widget, tmp_path):
    path = write_ome(tmp_path / "cells.ome.tif", camera_image(96), [{"Gain": 2, "Offset": 100}])
    (layer,) = restore_widget.viewer.open(path, plugin="napari")
    assert layer.source.path == path
    restore_widget.image.value = layer
    restore_widget.noise_model.value = "poisson-gaussian"
    assert (restore_widget.gain.value, restore_widget.offset.value) == (2.0, 100.0)
    fitted = PoissonGaussian(2.0, restore_widget.read_sd.value, 100.0)  # read sd fitted with that gain
    assert fitted.variance(800.0) == pytest.approx(CAMERA.variance(800.0), rel=0.15)
    label = restore_widget.noise_estimate.value
    assert label.startswith("From OME metadata (DetectorSettings Gain of channel 0") and "the rest estimated" in label
