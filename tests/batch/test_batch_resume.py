"""Resuming a batch run (napari_treg.batch.runner / outputs): a unit is done only when its record, its
input and its output all still match; on a real LocalCluster of 2 worker processes, analytic prior.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from napari_treg import restore  # noqa: E402
from napari_treg.batch import open_result, restore_many  # noqa: E402
from napari_treg.io import files as io  # noqa: E402
from napari_treg.operators import GaussianBlur  # noqa: E402

SETTINGS = {"model": "analytic", "device": "cpu", "steps": 4, "seed": 5}
BLUR = GaussianBlur(1.0)


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


def mtimes(folder: Path, names) -> dict[str, int]:
    return {name: (folder / name).stat().st_mtime_ns for name in names}


def test_a_deleted_output_file_is_recreated(client, tmp_path):
    """Issue 21.3: the record alone does not make a unit done; its output must be there."""
    images = image_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    assert restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, **SETTINGS).ok
    (out / "img1.tif").unlink()
    kept = mtimes(out, ["img0.tif", "img2.tif"])
    report = restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, **SETTINGS)
    assert report.ok and report.computed == 1 and report.skipped == 2
    assert np.array_equal(io.read_image(out / "img1.tif"), restore(images["img1.tif"], BLUR, **SETTINGS))
    assert mtimes(out, kept) == kept


def test_a_truncated_output_file_is_recomputed(client, tmp_path):
    """Issue 21.3: an output cut short (or replaced) since its record was written counts as not done."""
    images = image_folder(tmp_path / "in", 2)
    out = tmp_path / "out"
    restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, **SETTINGS)
    data = (out / "img0.tif").read_bytes()
    (out / "img0.tif").write_bytes(data[: len(data) // 2])
    report = restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, **SETTINGS)
    assert report.computed == 1 and report.skipped == 1
    assert np.array_equal(io.read_image(out / "img0.tif"), restore(images["img0.tif"], BLUR, **SETTINGS))


def test_a_changed_input_is_recomputed(client, tmp_path):
    """Issue 23.2: same name, shape and dtype, other content: not skipped as done."""
    image_folder(tmp_path / "in", 3)
    out = tmp_path / "out"
    restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, **SETTINGS)
    changed = measurement((16, 16), seed=99)
    io.write_image(tmp_path / "in" / "img2.tif", changed)
    report = restore_many(str(tmp_path / "in"), str(out), BLUR, client=client, **SETTINGS)
    assert report.ok and report.computed == 1 and report.skipped == 2
    assert np.array_equal(io.read_image(out / "img2.tif"), restore(changed, BLUR, **SETTINGS))
    record = json.loads((out / "img2.tif.treg.json").read_text())
    assert len(record["input_digest"]) == 64 and len(record["output_digest"]) == 64
    assert record["torch_threads"] == 1  # issue 21.8: the embedded workers' count, recorded per unit


def test_a_deleted_zarr_chunk_is_recomputed(client, tmp_path):
    """Issue 21.3 for a zarr output: a plane whose chunk is gone is restored again, the others kept."""
    stack = measurement((3, 16, 16), seed=3)
    source = zarr.create_array(str(tmp_path / "in.zarr"), shape=stack.shape, chunks=(1, 16, 16), dtype=stack.dtype)
    source[:] = stack
    out = tmp_path / "out.zarr"
    restore_many(str(tmp_path / "in.zarr"), str(out), BLUR, client=client, **SETTINGS)
    chunk = out / "c" / "1" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    report = restore_many(str(tmp_path / "in.zarr"), str(out), BLUR, client=client, **SETTINGS)
    assert report.ok and report.computed == 1 and report.skipped == 2
    assert np.array_equal(open_result(out)[0].compute(), restore(stack, BLUR, **SETTINGS))


def test_sigterm_stops_the_batch_cli_like_ctrl_c(tmp_path):
    """Issue 23.5: SIGTERM (kill, timeout, a SLURM limit) mid-run: exit 130, no hidden .part file, resumable."""
    image_folder(tmp_path / "in", 6)
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "in"), "-o", str(out), "--operator", "gauss", "--sigma", "1"]
    args += ["--model", "analytic", "--device", "cpu", "--steps", "40", "--workers", "1", "-q"]
    cli = subprocess.Popen([sys.executable, "-m", "napari_treg.cli", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.treg.json")) and time.monotonic() < deadline and cli.poll() is None:
        time.sleep(0.05)
    cli.send_signal(signal.SIGTERM)
    stderr = cli.communicate(timeout=90)[1]
    assert cli.returncode == 130, stderr
    assert "rerun the same command to resume" in stderr and "Traceback" not in stderr
    time.sleep(1)  # the embedded cluster's workers are gone with the client; nothing writes any more
    assert not [p.name for p in out.iterdir() if ".part" in p.name]
    done = len(list(out.glob("*.treg.json")))
    assert 1 <= done < 6
    rerun = subprocess.run([sys.executable, "-m", "napari_treg.cli", *args[:-1]], capture_output=True, text=True)
    assert rerun.returncode == 0 and f"{6 - done} units restored, {done} already done" in rerun.stderr


def test_sigterm_while_restore_writes_leaves_no_part_file(tmp_path, monkeypatch):
    """Issue 23.5 for ``restore``: SIGTERM while the output is being written: exit 130, nothing left."""
    from napari_treg.cli import commands as cli

    io.write_image(tmp_path / "in.tif", measurement((16, 16)))
    real_write = io.write_image

    def write_then_terminate(path, array, **kwargs):
        written = real_write(path, array, **kwargs)  # the temporary file of write_together exists now
        assert any(".part" in p.name for p in tmp_path.iterdir())
        os.kill(os.getpid(), signal.SIGTERM)
        return written

    monkeypatch.setattr(io, "write_image", write_then_terminate)
    handler = signal.getsignal(signal.SIGTERM)
    args = ["restore", str(tmp_path / "in.tif"), "-o", str(tmp_path / "out.tif"), "--operator", "gauss"]
    status = cli.main([*args, "--sigma", "1", "--model", "analytic", "--device", "cpu", "--steps", "2", "-q"])
    assert status == 130
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]
    assert signal.getsignal(signal.SIGTERM) == handler  # put back after the run
