"""The typed run record (engine/run_info.py): ``info`` is its one serialisation, unchanged, and survives the writers.

The pinned infos in ``data/run_info_before.json`` were written by the code before the record existed
(run_info_cases.py); ``info`` must still be that dict: the same keys in the same order, the same values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from run_info_cases import PINNED, ensembles, infos, measurement, pinnable, restorations

from napari_treg import api
from napari_treg.batch.outputs import FolderOutput
from napari_treg.batch.sources import Unit
from napari_treg.batch.units import unit_info, unit_record
from napari_treg.cli.commands import main
from napari_treg.engine.run_info import EnsembleInfo, NoiseModelInfo, RunInfo, TilingInfo, VolumeInfo
from napari_treg.io import files as io
from napari_treg.plugin.layers import restore_metadata, select_planes
from napari_treg.plugin.ome_tiff import read_layer_record, write_ome_tiff
from napari_treg.solver.conflict import TextConflict


def assert_same(now: Any, before: Any, path: str = "info") -> None:
    """The same JSON: keys in the same order, the same types, floats within a cross-machine tolerance."""
    if isinstance(before, dict):
        assert isinstance(now, dict) and list(now) == list(before), f"{path}: keys {list(now)} != {list(before)}"
        for key in before:
            assert_same(now[key], before[key], f"{path}[{key!r}]")
    elif isinstance(before, list):
        assert isinstance(now, list) and len(now) == len(before), f"{path}: {now!r} != {before!r}"
        for k, (a, b) in enumerate(zip(now, before)):
            assert_same(a, b, f"{path}[{k}]")
    elif isinstance(before, float):  # float32 runs differ across CPUs' vector units (3.8e-5 relative seen on one)
        assert isinstance(now, float) and math.isclose(now, before, rel_tol=1e-3, abs_tol=1e-9), f"{path}: {now!r}"
    else:
        assert type(now) is type(before) and now == before, f"{path}: {now!r} != {before!r}"


def as_json(value: Any) -> Any:
    """What a JSON writer and reader make of ``value``."""
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def restored() -> dict[str, Any]:
    return restorations()


@pytest.fixture(scope="module")
def sampled() -> dict[str, Any]:
    return ensembles()


def test_info_is_what_the_runs_recorded_before_the_typed_record(restored, sampled):
    recorded = infos(restored, sampled)
    pinned = json.loads(PINNED.read_text())
    assert list(recorded) == list(pinned)
    for name, info in recorded.items():
        assert_same(pinnable(info), pinned[name], name)


def test_info_is_the_records_one_serialisation_and_the_record_is_typed(restored):
    result = restored
    for restoration in result.values():
        assert isinstance(restoration.run_info, RunInfo)
        assert restoration.info is restoration.info  # serialised once: the same dict every time
        assert restoration.info == restoration.run_info.as_dict()
        image, info = restoration
        assert image is restoration.image and info is restoration.info
        assert isinstance(restoration.run_info.text_conflict, TextConflict)
        assert restoration.run_info.text_conflict == TextConflict.of(restoration.info)
    assert result["restore"].run_info.params.prompt == "cells" and result["restore"].run_info.seed == 5
    assert isinstance(result["tiled"].run_info.tiling, TilingInfo) and result["tiled"].run_info.tiling.tiles > 1
    assert result["tiled"].run_info.text_conflict.reason == "no prompt"
    volume = result["volume"].run_info.volume
    assert isinstance(volume, VolumeInfo) and volume.planes == 4 and volume.psf_voxel_size == (0.3, 0.1, 0.1)
    noise_model = result["photon"].run_info.noise_model
    assert isinstance(noise_model, NoiseModelInfo) and noise_model.input_units.gain == 2.0
    assert noise_model.source == "given" and "estimated" in result["photon_estimated"].run_info.noise_model.source
    assert result["restore"].run_info.noise_model is None and result["restore"].run_info.volume is None


def test_an_ensembles_record_holds_its_mean_as_a_restores(sampled):
    for name, result in sampled.items():
        record = result.run_info
        assert isinstance(record, EnsembleInfo) and result.info is result.info
        assert result.info == record.as_dict() and result.restoration_info() == record.restoration_dict()
        assert record.settings.text_conflict is None  # the check is the ensemble's
        assert record.as_restoration().text_conflict == record.text_conflict == TextConflict.of(result.info)
        assert record.samples == len(record.seeds), name
    held_out = sampled["ensemble_holdout"].run_info.holdout
    assert held_out is not None and held_out["verdict"].startswith("held-out check: ")


def test_the_record_round_trips_through_the_cli_info_file(tmp_path, monkeypatch):
    made, real = [], api.restore

    def restore(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr("napari_treg.api.restore", restore)
    source, written = tmp_path / "in.tif", tmp_path / "run.json"
    io.write_image(source, measurement((16, 16)))
    argv = ["restore", str(source), "-o", str(tmp_path / "out.tif"), "--operator", "denoise", "--model", "analytic"]
    assert main([*argv, "--steps", "2", "--prompt", "cells", "--info", str(written), "-q"]) == 0
    read_back = json.loads(written.read_text())
    assert read_back == as_json(made[0].run_info.as_dict())
    assert TextConflict.of(read_back) == made[0].run_info.text_conflict


def test_the_record_round_trips_through_a_batch_record_and_a_saved_layer(restored, sampled, tmp_path):
    restoration, result = restored["volume"], sampled["ensemble_holdout"]
    for run_info, image, restored in [
        (restoration.run_info, measurement((4, 16, 16), 3), restoration.image),
        (result.run_info, measurement((16, 16), 5), result.mean),
    ]:
        info = unit_info(run_info)
        unit = Unit("cells.tif", "cells.tif", 0)
        output = FolderOutput(str(tmp_path / type(run_info).__name__))
        Path(output.path).mkdir()
        output.write(unit, image, restored, info, unit_record(unit, run_info, "digest"))
        read_back = output.record(unit)
        assert read_back is not None and {key: read_back[key] for key in info} == as_json(info)
        assert TextConflict.of(read_back) == TextConflict.of(info)

        planes = select_planes(image, False, "whole stack", ())
        record = restore_metadata(input_name="y", operator={"name": "blur"}, settings={}, info=info, planes=planes)
        path = str(tmp_path / f"{type(run_info).__name__}.ome.tif")
        write_ome_tiff(path, restored, {"name": "y TReg", "scale": [1.0] * restored.ndim, "metadata": {"treg": record}})
        saved = read_layer_record(path)
        assert saved is not None and {key: saved["metadata"]["treg"][key] for key in info} == as_json(info)
    assert unit_info(result.run_info) == result.restoration_info()
    assert unit_record(unit, result.run_info, "digest")["holdout"] == result.run_info.holdout
