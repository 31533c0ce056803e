"""The npe2 manifest, the sample data and the demo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_treg
from napari_treg.plugin import sample_data

MANIFEST = Path(napari_treg.__file__).parent / "napari.yaml"
SAMPLES = (
    "photograph_sr",
    "photograph_inpainting",
    "fluorescence_blur",
    "fluorescence_stack_sr",
    "fluorescence_photons",
)


def test_manifest_validates_and_its_commands_import():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(MANIFEST)
    manifest.validate_imports()
    assert manifest.name == "napari-treg" and manifest.display_name == "napari-treg"
    assert [w.display_name for w in manifest.contributions.widgets] == [
        "Restore (TReg)",
        "Simulate degradation",
        "Batch on a cluster (TReg)",
    ]
    assert tuple(s.key for s in manifest.contributions.sample_data) == SAMPLES
    # the installed package advertises the same manifest
    assert PluginManifest.from_distribution("napari-treg").name == "napari-treg"


@pytest.mark.parametrize("function", [getattr(sample_data, key) for key in SAMPLES])
def test_sample_data_pairs_a_clean_image_with_its_measurement(function):
    layers = function()
    images = [(data, kwargs) for data, kwargs, kind in layers if kind == "image"]
    (clean, clean_kwargs), (measured, measured_kwargs) = images
    assert np.isfinite(measured).all() and measured.dtype == np.float32
    record = measured_kwargs["metadata"]["treg_simulation"]
    assert record["source_layer"] == clean_kwargs["name"] and "name" in record["operator"]
    factor = record["operator"].get("factor", 1)
    assert measured.shape[-2 - clean_kwargs["rgb"]] * factor == clean.shape[-2 - clean_kwargs["rgb"]]


def test_samples_and_widgets_open_in_napari(make_napari_viewer):
    from napari_treg.plugin.demo import open_demo, parse_args

    viewer = make_napari_viewer()
    widget = open_demo(viewer, "fluorescence_blur", model="tiny", steps=3)
    assert widget.image.value.name == "nuclei (blurred)"
    assert widget.reference.value.name == "nuclei (clean)"
    assert widget.operator.value == "gauss" and widget.sigma.value == 3.0
    assert widget.model.value == "tiny" and widget.steps.value == 3
    for key in SAMPLES[:2] + SAMPLES[3:]:
        viewer.open_sample("napari-treg", key)
    assert "cat scratches (mask)" in viewer.layers and viewer.layers["nuclei stack (2x binned)"].ndim == 3
    assert parse_args(["photograph_sr"]).sample == "photograph_sr"
    assert parse_args(["--", "--model", "tiny"]).model == "tiny"


def test_demo_command_opens_the_viewer(make_napari_viewer, monkeypatch):
    import napari

    from napari_treg.cli import commands as cli

    viewers = []

    def viewer_factory(**kwargs):
        viewers.append(make_napari_viewer())
        return viewers[-1]

    monkeypatch.setattr(napari, "Viewer", viewer_factory)
    monkeypatch.setattr(napari, "run", lambda: None)
    assert cli.main(["demo", "photograph_sr", "--model", "tiny"]) == 0
    (viewer,) = viewers
    assert "astronaut (4x downsampled)" in viewer.layers
    widget = viewer.window.dock_widgets["Restore (TReg) (napari-treg)"]
    assert widget.operator.value == "sr" and widget.factor.value == 4
    assert widget.model.value == "tiny"
