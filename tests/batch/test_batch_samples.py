"""``restore_many(..., samples=N)`` / ``napari-treg batch --samples N``: an ensemble per unit, its mean the
unit's output and its maps beside it; on a real LocalCluster of 2 worker processes, analytic prior.

Seed rule: unit ``p`` (plane number, 0 for a file) is ``ensemble(plane, seed=seed + p * samples)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_treg import InvalidInputError, io  # noqa: E402
from napari_treg.api import ensemble  # noqa: E402
from napari_treg.batch import open_result, restore_many  # noqa: E402
from napari_treg.cli.commands import main  # noqa: E402
from napari_treg.io.files import companion  # noqa: E402
from napari_treg.operators import GaussianBlur  # noqa: E402

SETTINGS = {"model": "analytic", "device": "cpu", "steps": 4, "seed": 5}
BLUR = GaussianBlur(1.0)
SAMPLES = 2


@pytest.fixture(scope="module")
def client():
    from napari_treg.batch.cluster import local_cluster

    with local_cluster(workers=2) as cluster, distributed.Client(cluster, set_as_default=False) as connected:
        yield connected


def measurement(shape, seed=0) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(np.uint16)


def image_folder(folder: Path, count: int) -> dict[str, np.ndarray]:
    folder.mkdir()
    images = {f"img{i}.tif": measurement((16, 16), seed=i) for i in range(count)}
    for name, image in images.items():
        io.write_image(folder / name, image)
    return images


def zarr_stack(path: Path, stack: np.ndarray) -> str:
    source = zarr.create_array(str(path), shape=stack.shape, chunks=(1, *stack.shape[1:]), dtype=stack.dtype)
    source[:] = stack
    return str(path)


def local_mean(image: np.ndarray, seed: int, **settings) -> np.ndarray:
    return ensemble(image, BLUR, samples=SAMPLES, keep_samples=False, **{**SETTINGS, "seed": seed, **settings}).mean


def test_files_get_the_mean_and_the_maps_beside_them(client, tmp_path):
    images = image_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    report = restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, samples=SAMPLES, **SETTINGS)
    assert report.ok and report.computed == 2
    for name, image in images.items():
        for suffix in ("std", "data_share"):
            mapped = io.read_image(companion(out / name, suffix))
            assert mapped.shape == image.shape and np.all(np.isfinite(mapped))
        share = io.read_image(companion(out / name, "data_share"))
        assert share.min() >= 0 and share.max() <= 1 and share.max() > 0
        assert io.read_image(companion(out / name, "std")).max() > 0
        assert not companion(out / name, "text_influence").exists()  # no prompt
        expected = tmp_path / f"expected-{name}"
        io.write_image(expected, local_mean(image, SETTINGS["seed"]), like=image)  # as the unit writes its mean
        assert np.array_equal(io.read_image(out / name), io.read_image(expected))


def test_zarr_gets_map_arrays_beside_it_and_each_plane_is_its_ensemble(client, tmp_path):
    stack = measurement((3, 16, 16), seed=3)
    out = tmp_path / "out.zarr"
    source = zarr_stack(tmp_path / "in.zarr", stack)
    prompted = {"prompt": "a disk", "guidance": 2.0}
    report = restore_many(source, str(out), BLUR, client=client, samples=SAMPLES, **SETTINGS, **prompted)
    assert report.ok
    mean = open_result(out)[0].compute()
    maps = {name: zarr.open_array(str(tmp_path / f"out.{name}.zarr"))[:] for name in ("std", "data_share")}
    maps["text_influence"] = zarr.open_array(str(tmp_path / "out.text_influence.zarr"))[:]
    for name, array in maps.items():
        assert array.shape == stack.shape and array.dtype == np.float32 and np.all(np.isfinite(array)), name
    assert np.all(maps["std"] > 0) and maps["text_influence"].max() > 0
    for plane in (0, 2):  # plane p: seed + p * samples
        local = ensemble(
            stack[plane],
            BLUR,
            samples=SAMPLES,
            keep_samples=False,
            **{**SETTINGS, **prompted, "seed": 5 + plane * SAMPLES},
            intensity_range=report.intensity_range,
        )
        assert np.array_equal(mean[plane], local.mean)
        assert np.array_equal(maps["std"][plane], local.std)
        assert np.array_equal(maps["text_influence"][plane], local.text_influence)


def test_a_deleted_std_map_recomputes_only_that_unit(client, tmp_path):
    image_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, samples=SAMPLES, **SETTINGS)
    kept = (out / "img0.tif").stat().st_mtime_ns
    companion(out / "img1.tif", "std").unlink()
    report = restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, samples=SAMPLES, **SETTINGS)
    assert report.ok and report.computed == 1 and report.skipped == 1
    assert companion(out / "img1.tif", "std").is_file()
    assert (out / "img0.tif").stat().st_mtime_ns == kept


def test_a_deleted_zarr_map_chunk_recomputes_that_plane(client, tmp_path):
    source = zarr_stack(tmp_path / "in.zarr", measurement((2, 16, 16), seed=4))
    out = tmp_path / "out.zarr"
    restore_many(source, str(out), BLUR, client=client, samples=SAMPLES, **SETTINGS)
    chunk = tmp_path / "out.data_share.zarr" / "c" / "1" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    report = restore_many(source, str(out), BLUR, client=client, samples=SAMPLES, **SETTINGS)
    assert report.ok and report.computed == 1 and report.skipped == 1 and chunk.is_file()


def test_an_output_made_with_other_samples_is_refused(client, tmp_path):
    image_folder(tmp_path / "in", 1)
    out = str(tmp_path / "out")
    restore_many(str(tmp_path / "in"), out, BLUR, client=client, samples=SAMPLES, **SETTINGS)
    with pytest.raises(InvalidInputError, match="samples: 2 -> 3"):
        restore_many(str(tmp_path / "in"), out, BLUR, client=client, samples=3, **SETTINGS)
    with pytest.raises(InvalidInputError, match="samples: 2 -> None"):
        restore_many(str(tmp_path / "in"), out, BLUR, client=client, **SETTINGS)


def test_samples_below_two_is_refused_before_any_work(tmp_path):
    image_folder(tmp_path / "in", 1)
    with pytest.raises(InvalidInputError, match="samples"):
        restore_many(str(tmp_path / "in"), str(tmp_path / "out"), BLUR, samples=1, **SETTINGS)
    assert not (tmp_path / "out").exists()


def test_cli_batch_samples_writes_the_maps(client, tmp_path):
    image_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "in"), "-o", str(out), "--operator", "gauss", "--sigma", "1"]
    args += ["--model", "analytic", "--device", "cpu", "--steps", "4", "--seed", "5", "--samples", "2"]
    assert main([*args, "--scheduler", client.scheduler.address, "-q"]) == 0
    assert all(companion(out / "img0.tif", name).is_file() for name in ("std", "data_share"))


def test_a_unit_whose_prompt_the_data_rule_out_is_counted_as_a_text_conflict(client, tmp_path):
    from napari_treg import degrade
    from napari_treg.models.analytic import template

    (tmp_path / "in").mkdir()
    blur = GaussianBlur(1.5)  # decides disk against square at 32x32 (tests/engine/test_data_first.py)
    io.write_image(tmp_path / "in" / "disk.tif", degrade(template("disk", (32, 32)), blur, noise=0.01, seed=0))
    settings = {**SETTINGS, "steps": 30, "noise": 0.01, "prompt": "a square"}
    report = restore_many(str(tmp_path / "in"), str(tmp_path / "out"), blur, client=client, samples=SAMPLES, **settings)
    assert report.ok and report.text_conflicts == 1
    conflict = report.records[0]["text_conflict"]
    assert conflict["flag"] and conflict["units"] == SAMPLES


def test_batch_holdout_records_each_units_check_and_prints_its_verdict(client, tmp_path, capsys):
    image_folder(tmp_path / "in", 1)
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "in"), "-o", str(out), "--operator", "gauss", "--sigma", "1"]
    args += ["--model", "analytic", "--device", "cpu", "--steps", "4", "--seed", "5", "--samples", "4"]
    assert main([*args, "--holdout", "0.2", "--scheduler", client.scheduler.address]) == 0
    local = ensemble(measurement((16, 16), seed=0), BLUR, samples=4, holdout=0.2, keep_samples=False, **SETTINGS)
    np.testing.assert_allclose(io.read_image(out / "img0.tif"), local.mean, rtol=1e-5, atol=1e-5)
    err = capsys.readouterr().err
    assert f"napari-treg: img0.tif: {local.info['holdout']['verdict']}" in err
    # the std before the check's correction beside the others, as restore --samples --holdout writes it
    expected = tmp_path / "expected.tif"
    io.write_image(expected, local.uncorrected_std, like=measurement((16, 16), seed=0))
    np.testing.assert_allclose(io.read_image(companion(out / "img0.tif", "uncorrected_std")), io.read_image(expected))
    # 4 steps: fewer than the ensemble's spread is calibrated for, said once
    assert err.count("warning: with 4 steps the ensemble's spread is likely too small") == 1
    with pytest.raises(InvalidInputError, match="holdout needs samples"):
        restore_many(str(tmp_path / "in"), str(tmp_path / "other"), BLUR, holdout=0.2, **SETTINGS)
    assert not (tmp_path / "other").exists()


def test_the_held_out_check_adds_the_uncorrected_std_to_every_units_maps():
    from napari_treg.batch.units import ensemble_maps
    from napari_treg.engine.ensemble import EnsembleSettings
    from napari_treg.engine.restore_settings import RestoreSettings

    plain, checked = EnsembleSettings(samples=4), EnsembleSettings(samples=4, holdout=0.1)
    assert ensemble_maps(RestoreSettings(), plain) == ("std", "data_share")
    assert ensemble_maps(RestoreSettings(), checked) == ("std", "data_share", "uncorrected_std")
    assert ensemble_maps(RestoreSettings(), None) == ()
