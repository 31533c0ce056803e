"""Scale-out (napari_treg.batch) on a real LocalCluster of 2 worker processes, analytic prior, tiny images.

Every result is compared bit for bit with local ``restore`` of the same input.
"""

from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_treg import InvalidInputError, restore  # noqa: E402
from napari_treg.batch import open_result, restore_many  # noqa: E402
from napari_treg.cli.commands import main  # noqa: E402
from napari_treg.imaging.layout import IntensityScale  # noqa: E402
from napari_treg.io import files as io  # noqa: E402
from napari_treg.operators import Denoising, GaussianBlur, SuperResolution  # noqa: E402

SETTINGS = {"model": "analytic", "device": "cpu", "steps": 4, "seed": 5}
SLOW = {**SETTINGS, "steps": 20}  # units long enough to be cut short


@pytest.fixture(scope="module")
def client():
    """The embedded cluster restore_many would start, with 2 worker processes."""
    from napari_treg.batch.cluster import local_cluster

    with local_cluster(workers=2) as cluster, distributed.Client(cluster, set_as_default=False) as connected:
        yield connected


def measurement(shape, seed=0, dtype=np.uint16) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) * 1000).astype(dtype)


def zarr_stack(path, data, names=("t", "z", "y", "x")) -> str:
    array = zarr.create_array(
        str(path),
        shape=data.shape,
        chunks=(1,) * (data.ndim - 2) + data.shape[-2:],
        dtype=data.dtype,
        dimension_names=list(names),
    )
    array[:] = data
    return str(path)


def executing(dask_worker) -> int:
    return len(dask_worker.state.executing)


def wait_idle(client, timeout=60.0) -> None:
    """Wait until no worker executes a task (cancelled tasks still finish their unit)."""
    deadline = time.monotonic() + timeout
    while any(client.run(executing).values()) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_zarr_stack_equals_local_restore(client, tmp_path):
    stack = measurement((2, 3, 16, 16))
    source = zarr_stack(tmp_path / "in.zarr", stack)
    report = restore_many(source, str(tmp_path / "out.zarr"), SuperResolution(2), client=client, **SETTINGS)
    assert report.ok and report.computed == 6 and report.skipped == 0
    expected = restore(stack, SuperResolution(2), **SETTINGS)
    restored, attrs = open_result(tmp_path / "out.zarr")
    assert restored.shape == (2, 3, 32, 32) and restored.chunks == ((1, 1), (1, 1, 1), (32,), (32,))
    assert np.array_equal(restored.compute(), expected)
    assert zarr.open_array(str(tmp_path / "out.zarr")).metadata.dimension_names == ("t", "z", "y", "x")
    planes = attrs["planes"]
    assert attrs["complete"] and len(planes) == 6
    assert [planes[f"1.{z}"]["seed"] for z in range(3)] == [8, 9, 10]  # plane k: seed + k
    assert all(np.isfinite(p["residual"]) and p["residual"] > 0 for p in planes.values())
    assert all(p["models_loaded"] == 1 for p in planes.values())  # once per worker process
    assert attrs["params"]["intensity_range"] == list(report.intensity_range)
    local = IntensityScale.from_data(stack.astype(np.float32))
    assert tuple(report.intensity_range) == (local.low, local.high)


def test_dask_layer_data_and_tiles_equal_local_restore(client, tmp_path):
    """A napari layer's dask array (never loaded whole), each plane restored in seam-free tiles."""
    da = pytest.importorskip("dask.array")
    stack = measurement((3, 24, 24), seed=1)
    layer_data = da.from_zarr(zarr_stack(tmp_path / "in.zarr", stack, ("z", "y", "x")))
    tiles = {**SETTINGS, "tile_size": 16, "tile_overlap": 4}
    report = restore_many(layer_data, str(tmp_path / "out.zarr"), GaussianBlur(1.0), client=client, **tiles)
    assert report.ok and report.computed == 3
    scale = IntensityScale.from_data(stack.astype(np.float32))
    expected = [
        restore(plane, GaussianBlur(1.0), intensity_range=(scale.low, scale.high), **{**tiles, "seed": 5 + k})
        for k, plane in enumerate(stack)
    ]
    restored, _ = open_result(tmp_path / "out.zarr")
    assert np.array_equal(restored.compute(), np.stack(expected))


def test_ome_zarr_keeps_axes_and_scales_pixel_sizes(client, tmp_path):
    from ome_zarr.writer import write_multiscales_metadata

    stack = measurement((2, 16, 16), seed=2)
    group = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w")
    group.create_array("0", shape=stack.shape, chunks=(1, 16, 16), dtype=stack.dtype)[:] = stack
    axes = [{"name": "c", "type": "channel"}, {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    transform = [{"type": "scale", "scale": [1.0, 0.4, 0.4]}]
    write_multiscales_metadata(group, datasets=[{"path": "0", "coordinateTransformations": transform}], axes=axes)
    report = restore_many(
        str(tmp_path / "in.ome.zarr"), str(tmp_path / "out.zarr"), SuperResolution(2), client=client, **SETTINGS
    )
    assert report.ok
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    image = out.attrs["ome"]["multiscales"][0]
    assert [a["name"] for a in image["axes"]] == ["c", "y", "x"]
    scale = image["datasets"][0]["coordinateTransformations"][0]["scale"]
    assert scale == [1.0, 0.2, 0.2]
    assert np.array_equal(out["0"][:], restore(stack, SuperResolution(2), **SETTINGS))


def test_folder_with_a_bad_file_names_it_and_writes_the_others(client, tmp_path):
    source, target = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    images = {f"cell{i}.tif": measurement((16, 16), seed=10 + i) for i in range(3)}
    for name, image in images.items():
        io.write_image(source / name, image)
    io.write_image(source / "rgb.png", measurement((16, 16, 3), seed=4, dtype=np.uint8))
    (source / "broken.tif").write_bytes(b"not a tiff")
    report = restore_many(str(source), str(target), SuperResolution(2), client=client, **SETTINGS)
    assert list(report.failed) == ["broken.tif"] and "broken.tif" in report.failed["broken.tif"]
    assert report.computed == 4 and not report.ok
    for name, image in {**images, "rgb.png": io.read_image(source / "rgb.png")}.items():
        expected = restore(image, SuperResolution(2), **SETTINGS)
        written = io.read_image(target / name)
        if name.endswith(".png"):  # written as the restore CLI writes a PNG
            expected = io.to_8_or_16_bit(expected, like=image, max_bits=8)
        assert np.array_equal(written, expected), name
        provenance = json.loads((target / f"{name}.treg.json").read_text())
        assert provenance["seed"] == 5 and provenance["params"]["steps"] == 4
    assert not (target / "broken.tif").exists()


def test_each_file_gets_the_camera_values_it_records(client, tmp_path):
    from noise_helpers import camera_image, write_ome

    source = tmp_path / "in"
    source.mkdir()
    write_ome(source / "cells.ome.tif", camera_image(), [{"Gain": 2, "Offset": 100}])
    io.write_image(source / "plain.tif", camera_image(seed=1))
    settings = {**SETTINGS, "steps": 2, "noise_model": "poisson-gaussian"}
    report = restore_many(str(source), str(tmp_path / "out"), Denoising(), client=client, **settings)
    assert report.ok and report.computed == 2
    recorded = json.loads((tmp_path / "out" / "cells.ome.tif.treg.json").read_text())["noise_model"]
    assert (recorded["input_units"]["gain"], recorded["input_units"]["offset"]) == (2.0, 100.0)
    assert recorded["source"].startswith("OME metadata (DetectorSettings Gain of channel 0")
    plain = json.loads((tmp_path / "out" / "plain.tif.treg.json").read_text())["noise_model"]
    assert plain["source"].startswith("estimated from the measurement")


def test_cli_exit_status_lists_failed_units(client, tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    io.write_image(source / "good.tif", measurement((16, 16)))

    def batch(output, steps=3):
        return main(
            [
                "batch",
                str(source),
                "-o",
                str(tmp_path / output),
                "--operator",
                "gauss",
                "--sigma",
                "1",
                "--model",
                "analytic",
                "--device",
                "cpu",
                "--steps",
                str(steps),
                "--scheduler",
                client.scheduler.address,
                "-q",
            ]
        )

    assert batch("ok") == 0
    (source / "bad.npy").write_bytes(b"garbage")
    assert batch("bad") == 1
    err = capsys.readouterr().err
    assert "1 of 2 units failed" in err and "bad.npy" in err
    assert (tmp_path / "bad" / "good.tif").exists()
    assert batch("ok", steps=5) == 2  # the same output with other settings: refused, naming them
    assert "steps: 3 -> 5" in capsys.readouterr().err


def test_killed_worker_is_retried_and_output_equals_clean_run(client, tmp_path):
    stack = measurement((6, 24, 24), seed=3)
    source = zarr_stack(tmp_path / "in.zarr", stack, ("t", "y", "x"))
    killed = []

    def kill_a_busy_worker(report, name, error):
        if killed:
            return
        busy = [address for address, keys in client.processing().items() if keys]
        pids = client.run(os.getpid, workers=busy[:1])
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    report = restore_many(
        source, str(tmp_path / "out.zarr"), GaussianBlur(1.0), client=client, on_unit=kill_a_busy_worker, **SLOW
    )
    assert killed and report.ok and report.computed == 6
    restored, _ = open_result(tmp_path / "out.zarr")
    assert np.array_equal(restored.compute(), restore(stack, GaussianBlur(1.0), **SLOW))
    client.wait_for_workers(2, timeout=60)


def test_interrupted_run_resumes_only_the_rest_and_refuses_other_parameters(client, tmp_path):
    stack = measurement((6, 24, 24), seed=4)
    source, target = zarr_stack(tmp_path / "in.zarr", stack, ("t", "y", "x")), str(tmp_path / "out.zarr")

    def interrupt_after_two(report, name, error):
        if report.computed == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        restore_many(source, target, GaussianBlur(1.0), client=client, on_unit=interrupt_after_two, **SLOW)
    wait_idle(client)
    done = len(os.listdir(tmp_path / "out.zarr" / ".treg-units"))
    assert 2 <= done < 6
    assert not zarr.open_array(target).attrs["napari_treg"]["complete"]
    report = restore_many(source, target, GaussianBlur(1.0), client=client, **SLOW)
    assert report.ok and report.skipped == done and report.computed == 6 - done
    restored, attrs = open_result(target)
    assert attrs["complete"] and len(attrs["planes"]) == 6
    assert np.array_equal(restored.compute(), restore(stack, GaussianBlur(1.0), **SLOW))
    with pytest.raises(InvalidInputError, match="steps: 20 -> 21"):
        restore_many(source, target, GaussianBlur(1.0), client=client, **{**SLOW, "steps": 21})
    with pytest.raises(InvalidInputError, match="operator"):
        restore_many(source, target, GaussianBlur(2.0), client=client, **SLOW)


def test_stack_intensity_range_equals_numpy_percentiles_exactly(monkeypatch):
    import dask
    import dask.array as da

    from napari_treg.batch import ranges

    monkeypatch.setattr(ranges, "FETCH_LIMIT", 40)  # force the histogram narrowing (inputs of 500+ values)
    rng = np.random.default_rng(7)
    cases = [
        rng.normal(size=3001).astype(np.float32),
        rng.integers(0, 4, 2000).astype(np.uint16),  # ties
        (rng.random(2500) ** 9 * 1e4).astype(np.float32),  # skewed
        np.full(500, 7, np.uint8),  # constant
    ]
    with dask.config.set(scheduler="synchronous"):
        for values in cases:
            local = IntensityScale.from_data(values.astype(np.float32))
            assert ranges.stack_intensity_range(da.from_array(values, chunks=313)) == (local.low, local.high)


def test_slurm_job_script_runs_one_single_threaded_worker_per_gpu():
    pytest.importorskip("dask_jobqueue")
    from napari_treg.batch.cluster import slurm_cluster

    with slurm_cluster(gpus=1, memory="24GB", walltime="02:00:00", queue="gpu", account="lab") as cluster:
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script and "#SBATCH -A lab" in script
    assert "#SBATCH -t 02:00:00" in script and "#SBATCH --cpus-per-task=1" in script
    assert "distributed.cli.dask_worker" in script and "--nthreads 1" in script and "--nworkers" not in script


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    with pytest.raises(InvalidInputError, match="stepz"):
        restore_many(str(tmp_path), str(tmp_path / "o"), GaussianBlur(1.0), stepz=3)
    with pytest.raises(InvalidInputError, match="model must be a name or path"):
        restore_many(str(tmp_path), str(tmp_path / "o"), GaussianBlur(1.0), model=object())
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        io.write_image(tmp_path / folder / "same.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(InvalidInputError, match="same name"):
        restore_many(str(tmp_path / "*" / "*.tif"), str(tmp_path / "o"), GaussianBlur(1.0))
    with pytest.raises(InvalidInputError, match="holds no image files"):
        restore_many(str(tmp_path), str(tmp_path / "o"), GaussianBlur(1.0))
    with pytest.raises(InvalidInputError, match=".zarr"):
        restore_many(np.zeros((2, 8, 8)), str(tmp_path / "o"), GaussianBlur(1.0))
    with pytest.raises(InvalidInputError, match="dc_until"):
        restore_many(np.zeros((2, 8, 8)), str(tmp_path / "o.zarr"), GaussianBlur(1.0), dc_until=2)


def test_cli_ctrl_c_exits_130_and_the_rerun_computes_only_the_rest(client, tmp_path, capsys):
    import subprocess
    import sys

    source = zarr_stack(tmp_path / "in.zarr", measurement((6, 24, 24), seed=6), ("t", "y", "x"))
    records = tmp_path / "out.zarr" / ".treg-units"
    args = [
        "batch",
        source,
        "-o",
        str(tmp_path / "out.zarr"),
        "--operator",
        "gauss",
        "--sigma",
        "1",
        "--model",
        "analytic",
        "--device",
        "cpu",
        "--steps",
        "20",
        "--scheduler",
        client.scheduler.address,
    ]
    cli = subprocess.Popen([sys.executable, "-m", "napari_treg.cli", *args, "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (records.is_dir() and len(os.listdir(records)) >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    cli.send_signal(signal.SIGINT)
    stderr = cli.communicate(timeout=60)[1]
    assert cli.returncode == 130 and "rerun the same command to resume" in stderr
    wait_idle(client)
    done = len(os.listdir(records))
    assert 1 <= done < 6
    assert main(args) == 0
    assert f"{6 - done} units restored, {done} already done" in capsys.readouterr().err


def test_a_unit_out_of_memory_is_retried_on_another_worker(tmp_path, monkeypatch):
    """Workers in this process (so the fault can be injected): plane 0 runs out of memory once."""
    from napari_treg.batch import units
    from napari_treg.errors import OutOfMemoryError

    calls = []
    real = units.restore_unit

    def out_of_memory_once(image, job, seed, noise_defaults=None):
        calls.append((seed, units.worker_address()))
        if seed == SETTINGS["seed"] and sum(s == seed for s, _ in calls) == 1:
            raise OutOfMemoryError("out of memory (injected)")
        return real(image, job, seed, noise_defaults)

    monkeypatch.setattr(units, "restore_unit", out_of_memory_once)
    stack = measurement((3, 16, 16))
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        distributed.Client(cluster, set_as_default=False) as local,
    ):
        report = restore_many(stack, str(tmp_path / "out.zarr"), GaussianBlur(1.0), client=local, **SETTINGS)
    assert report.ok and report.computed == 3 and not report.failed
    tries = [address for seed, address in calls if seed == SETTINGS["seed"]]
    assert len(tries) == 2 and tries[0] != tries[1]  # retried, on the other worker
    expected = restore(stack, GaussianBlur(1.0), **SETTINGS)
    assert np.array_equal(open_result(tmp_path / "out.zarr")[0].compute(), expected)
