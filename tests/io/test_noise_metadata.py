"""Camera gain and offset recorded in an OME-TIFF: read, used as the Poisson-Gaussian defaults, and said so."""

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from noise_helpers import CAMERA, camera_image, write_ome

from napari_treg.batch.sources import FileSource
from napari_treg.batch.units import recorded_noise_defaults
from napari_treg.cli.commands import main
from napari_treg.engine.restorer import RunSettings, prepare
from napari_treg.errors import InvalidInputError
from napari_treg.io.files import read_noise_defaults
from napari_treg.noise import NoiseDefaults, PoissonGaussian
from napari_treg.operators import Denoising


def test_detector_settings_come_before_the_detector(tmp_path):
    path = write_ome(tmp_path / "a.ome.tif", camera_image(), [{"Gain": 2, "Offset": 100}], {"Gain": 7, "Offset": 5})
    recorded = read_noise_defaults(path)
    assert (recorded.gain, recorded.offset) == (2.0, 100.0)
    assert recorded.source.startswith("OME metadata (DetectorSettings Gain of channel 0")


def test_the_detector_is_read_when_the_channel_records_nothing(tmp_path):
    path = write_ome(tmp_path / "a.ome.tif", camera_image(), [None], {"Gain": 1.5, "Offset": 90, "Type": "CCD"})
    recorded = read_noise_defaults(path)
    assert (recorded.gain, recorded.offset) == (1.5, 90.0)
    assert "Detector Gain" in recorded.source and "Detector Offset" in recorded.source


def test_channels_that_disagree_record_nothing_of_that_value(tmp_path):
    image = np.stack([camera_image(), camera_image(seed=1)])
    path = write_ome(tmp_path / "a.ome.tif", image, [{"Gain": 2, "Offset": 100}, {"Gain": 4, "Offset": 100}])
    recorded = read_noise_defaults(path)
    assert (recorded.gain, recorded.offset) == (None, 100.0)
    path = write_ome(tmp_path / "b.ome.tif", image, [{"Gain": 2}, {"Gain": 4}])
    assert read_noise_defaults(path) is None


def test_files_without_camera_values_record_nothing(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", camera_image())
    tifffile.imwrite(tmp_path / "ome.ome.tif", camera_image(), metadata={"axes": "YX"})  # OME-XML, no detector
    tifffile.imwrite(tmp_path / "broken.tif", camera_image(), description="<?xml version='1.0'?><OME", metadata=None)
    np.save(tmp_path / "a.npy", camera_image())
    for name in ("plain.tif", "ome.ome.tif", "broken.tif", "a.npy"):
        assert read_noise_defaults(tmp_path / name) is None, name
    path = write_ome(tmp_path / "nan.ome.tif", camera_image(), [{"Gain": "NaN", "Offset": "none"}])
    assert read_noise_defaults(path) is None
    path = write_ome(tmp_path / "zero.ome.tif", camera_image(), [{"Gain": 0, "Offset": 100}])
    assert read_noise_defaults(path) == NoiseDefaults(gain=None, offset=100.0, source=read_noise_defaults(path).source)


def test_a_recorded_gain_is_refused_when_not_positive():
    with pytest.raises(InvalidInputError, match="recorded gain must be a finite number > 0"):
        NoiseDefaults(gain=0.0, source="OME metadata")


def prepared(options: RunSettings, defaults: NoiseDefaults | None):
    return prepare(camera_image(), Denoising(), options, noise_defaults=defaults)


def test_a_recorded_gain_and_offset_are_the_models_defaults_and_read_sd_is_fitted_with_them():
    defaults = NoiseDefaults(gain=2.0, offset=100.0, source="OME metadata (DetectorSettings Gain)")
    run = prepared(RunSettings(noise_model="poisson-gaussian"), defaults)
    assert (run.noise_model.gain, run.noise_model.offset) == (2.0, 100.0)
    for adu in (300.0, 800.0):  # the read noise fitted with the recorded gain: the variance within 15 %
        assert run.noise_model.variance(adu) == pytest.approx(CAMERA.variance(adu), rel=0.15)
    source = run.noise_model_info().source
    assert source.startswith("OME metadata (DetectorSettings Gain): gain 2, offset 100 (gain, offset); read_sd")
    assert "DOUBTFUL" not in source  # the recorded gain agrees with the measurement's own fit
    estimated = prepared(RunSettings(noise_model="poisson-gaussian"), None)
    assert estimated.noise_model_source.startswith("estimated from the measurement")
    assert estimated.noise_model.gain != 2.0  # without the record the gain is estimated


def test_a_recorded_gain_far_from_the_measurements_own_fit_is_named_as_doubtful():
    amplifier = NoiseDefaults(gain=300.0, source="OME metadata (Detector Gain)")  # an EM-gain setting, say
    run = prepared(RunSettings(noise_model="poisson-gaussian", offset=100.0), amplifier)
    assert run.noise_model.gain == 300.0  # used as recorded, and said to be doubtful
    assert re.search(r"DOUBTFUL: the measurement's own fit gives gain (1\.[5-9]|2\.[0-5])", run.noise_model_source)


def test_what_the_user_gives_wins_over_the_record():
    defaults = NoiseDefaults(gain=5.0, offset=90.0, source="OME metadata (Detector Gain)")
    given = prepared(RunSettings(noise_model="poisson-gaussian", gain=2.0, read_sd=3.0), defaults)
    assert given.noise_model == PoissonGaussian(2.0, 3.0, 90.0)  # the offset not given: the recorded one
    assert given.noise_model_source == "given (offset from OME metadata (Detector Gain): gain 5, offset 90)"
    full = prepared(RunSettings(noise_model="poisson-gaussian", gain=2.0, read_sd=3.0, offset=100.0), defaults)
    assert full.noise_model == CAMERA and full.noise_model_source == "given"
    offset = prepared(RunSettings(noise_model="poisson-gaussian", offset=100.0), defaults)
    assert (offset.noise_model.gain, offset.noise_model.offset) == (5.0, 100.0)
    gaussian = prepared(RunSettings(), defaults)  # no model asked for: the record is not used
    assert gaussian.noise_model is None


def restore_command(path, out, info) -> list[str]:
    return [
        "restore",
        str(path),
        "--operator",
        "denoise",
        "--model",
        "analytic",
        "--steps",
        "2",
        "--noise-model",
        "poisson-gaussian",
        "-o",
        str(out),
        "--info",
        str(info),
    ]


def test_the_command_line_uses_the_files_record_and_says_so(tmp_path, capsys):
    path = write_ome(tmp_path / "cells.ome.tif", camera_image(), [{"Gain": 2, "Offset": 100}])
    out, info = tmp_path / "x.tif", tmp_path / "run.json"
    assert main(restore_command(path, out, info)) == 0
    model = json.loads(info.read_text())["noise_model"]
    assert (model["input_units"]["gain"], model["input_units"]["offset"]) == (2.0, 100.0)
    assert model["source"].startswith("OME metadata (DetectorSettings Gain of channel 0, DetectorSettings Offset")
    assert "noise model gain 2, read_sd" in capsys.readouterr().err
    tifffile.imwrite(tmp_path / "plain.tif", camera_image())
    assert main([*restore_command(tmp_path / "plain.tif", out, info), "-q"]) == 0
    assert json.loads(info.read_text())["noise_model"]["source"].startswith("estimated from the measurement")


def test_a_batch_unit_reads_its_own_files_record(tmp_path):
    path = write_ome(tmp_path / "cells.ome.tif", camera_image(), [{"Gain": 2, "Offset": 100}])
    source = FileSource((path,))
    (unit,) = source.units()
    job = SimpleNamespace(settings=SimpleNamespace(run=RunSettings(noise_model="poisson-gaussian")))
    assert recorded_noise_defaults(source, unit, job) == read_noise_defaults(path)
    assert recorded_noise_defaults(source, unit, SimpleNamespace(settings=SimpleNamespace(run=RunSettings()))) is None
